"""A backend that times nothing: for tests of what the search does with measurements, free of
this shared machine's load (real timing of a 0.1 ms network under load decides nothing)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxmerge.latency.backend import Backend, MeasurePolicy

ONE_SHOT = MeasurePolicy(
    warmup_runs=1, warmup_s=0.0, block_s=0.0, min_block=1, max_block=1, window=1, max_s=0.0
)


def conv_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of every Conv and ConvTranspose of a static-shaped model (shapes
    inferred)."""
    model = onnx.shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]  # O x I/group x kernel (1-D, 2-D or 3-D)
            total += int(np.prod(dims[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":  # every input pixel scatters a kernel
            w = weights[node.input[1]]
            total += int(np.prod(dims[node.input[0]])) * int(np.prod(w[1:]))
    return total


class MacsBackend(Backend):
    """A model "runs" in 1 us per node plus 1 ns per 100 conv multiply-accumulates, exactly."""

    name = "macs"

    def __init__(self, **common: Any) -> None:
        super().__init__(policy=ONE_SHOT, **common)

    def _fingerprint_impl(self) -> dict[str, Any]:
        return {"cost": "1us/node + 1e-11 s/MAC"}

    def load(self, onnx_bytes: bytes) -> float:
        model = onnx.load_from_string(onnx_bytes)
        return 1e-6 * len(model.graph.node) + 1e-11 * conv_macs(model)

    def _run_once(self, prepared: Any) -> None:
        pass

    def _time_once(self, prepared: Any) -> float:
        seconds, _feed = prepared
        return seconds
