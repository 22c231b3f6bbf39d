"""INT8 after compression: ONNX Runtime static quantization, and INT8 of the input beside it.

What a user does instead of onnxmerge, or after it, is ONNX Runtime's static INT8: QDQ
format, per-channel weights (QInt8), activations QUInt8 with MinMax ranges from calibration
inputs, after ORT's recommended pre-processing (`quant_pre_process`: shape inference and
graph optimization). `quantize_int8` is exactly that, so `--int8` writes what the user would
have made, and `int8_rows` (api.quantize_result) puts the two side by side on the same
inputs: the compressed network quantized, and the input quantized alone, each timed against
the original float network in one fresh process and scored on the held-out calibration
inputs (summary.fidelity). Top-1 agreements roughly multiply when INT8 follows a compression
(benchmarks/results/fidelity.md, run M), so this report is how a user sees whether
compressing first was worth it.

onnxruntime.quantization is imported lazily (it pulls in more of onnxruntime than a
compress needs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxmerge.errors import OnnxMergeError

SCHEME = "ONNX Runtime static INT8 (QDQ, QUInt8 activations, per-channel QInt8 weights, MinMax)"
SAME_SPEED = 0.03  # speedups this close count as equal (timing on a shared CPU moves more)
SAME_FIDELITY = 0.05  # distortions this close (relative) count as equal


def quantize_int8(
    model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]
) -> onnx.ModelProto:
    """`model` quantized to INT8 by ONNX Runtime (module docstring), its activation ranges
    calibrated on `feeds` (batch-1 input dicts, at least one).

    Raises OnnxMergeError when there are no feeds or ONNX Runtime cannot quantize the model.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise OnnxMergeError("INT8 quantization needs at least one calibration input")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="onnxmerge-int8-") as tmp:
        src, pre, out = (str(Path(tmp) / n) for n in ("in.onnx", "pre.onnx", "q.onnx"))
        large = model.ByteSize() > 2**31 - 2**20  # protobuf's 2 GB limit
        onnx.save(model, src, save_as_external_data=large)
        try:
            quant_pre_process(src, pre, save_as_external_data=large)
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            use_external_data_format=large)  # fmt: skip
        except Exception as exc:  # ORT raises many kinds (ValueError, RuntimeError, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxMergeError(
                f"ONNX Runtime could not quantize the model to INT8: {first}"
            ) from exc
        return onnx.load(out)


@dataclass
class Int8Row:
    """One network of the INT8 report: its median latency (ms), speedup over the original
    float network, fidelity to it (summary.fidelity's dict per output) and size in bytes."""

    network: str
    ms: float
    speedup: float
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes: int = 0  # the serialized model's size
    written: bool = False  # the one --int8 writes


def int8_rows(
    original: onnx.ModelProto,
    nets: dict[str, onnx.ModelProto],
    ms: Sequence[float],
    held: Sequence[dict[str, np.ndarray]],
    written: onnx.ModelProto,
) -> list[Int8Row]:
    """One Int8Row per named network of `nets`: `ms` are the latencies of `original` and then
    of `nets` in order, measured together (api.quantize_result times them in a fresh process);
    fidelity to `original` on the `held` feeds; `written` is the one --int8 writes."""
    from onnxmerge.summary import fidelity

    return [
        Int8Row(name, t, ms[0] / t, fidelity(original, m, list(held)), m.ByteSize(), m is written)
        for (name, m), t in zip(nets.items(), ms[1:], strict=True)
    ]


def _distortion(fidelity: dict[str, dict[str, float]]) -> float:
    """Summed over outputs: KL for classifiers, relative error otherwise (summary.fidelity)."""
    return sum(m["kl"] if "kl" in m else m.get("rel_error", 0.0) for m in fidelity.values())


def verdict(rows: Sequence[dict]) -> str:
    """One line on whether compressing before INT8 paid against INT8 alone (rows as dicts of
    Int8Row): faster means more than SAME_SPEED apart, closer more than SAME_FIDELITY apart
    in `_distortion`."""
    by = {r["network"]: r for r in rows}
    q, alone = by["onnxmerge + INT8"], by["INT8 alone"]
    gain = q["speedup"] / alone["speedup"]
    dq, da = _distortion(q["fidelity"]), _distortion(alone["fidelity"])
    how = f"({'KL' if any('kl' in m for m in q['fidelity'].values()) else 'error'} {dq:.3g} "
    how += f"vs {da:.3g})"
    same = abs(dq - da) <= SAME_FIDELITY * max(dq, da)
    near = "about as close" if same else "closer" if dq < da else "further"
    if gain > 1 + SAME_SPEED:
        joint = "but is" if near == "further" else "and is"
        return f"onnxmerge + INT8 runs {gain:.2f}x INT8 alone's speed {joint} {near} {how}"
    if near == "closer":
        pace = "about as fast as" if gain >= 1 - SAME_SPEED else f"slower ({gain:.2f}x) than"
        return f"onnxmerge + INT8 is {pace} INT8 alone and closer {how}"
    alone = "about as close" if same else "closer"  # onnxmerge + INT8 is not closer here
    return (
        f"INT8 alone is as fast or faster ({1 / gain:.2f}x) and {alone} {how}: compressing "
        "first did not pay here"
    )
