"""An ONNX graph executed op by op with torch: the torch latency backend and fine-tuning.

There is no ONNX->torch converter in PyTorch itself, so a small interpreter executes the ops
onnxmerge emits (Conv, Add, the activations) plus the ones common CNNs need end to end
(onnxmerge.torch_ops). Ops are checked when the graph is loaded: an unsupported one fails at
once, by name. `TorchGraph.run` records autograd when the caller's mode does
(onnxmerge.finetune trains through it); `__call__` runs under inference mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.errors import OnnxMergeError
from onnxmerge.torch_ops import _HOST_INPUTS, _ops, _rebatch, _reshape, _torch

__all__ = ["TorchGraph", "_torch"]


class TorchGraph:
    """An ONNX graph executed op by op with torch, on one device.

    `dtype` (a torch floating dtype, e.g. torch.float16) runs the graph at that precision, as
    `module.half()` would: float initializers are cast to it and so are Casts to float32;
    callers cast the float inputs (TorchBackend.prepare does). None runs the graph as stored.
    """

    def __init__(self, model: onnx.ModelProto, device: str = "cpu", dtype: Any = None) -> None:
        torch = _torch()
        graph, self.device, self.dtype = model.graph, device, dtype
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        ops = _ops()
        bad = sorted({n.op_type for n in graph.node if n.op_type not in ops | {"Constant": 0}})
        bad += sorted(
            {f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")}
        )
        if bad:
            raise OnnxMergeError(
                "onnxmerge's torch interpreter (distillation, --backend torch) does not "
                f"support op(s): {', '.join(bad)}"
            )
        host: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                host[node.output[0]] = _constant_value(node)
        self.consts = {k: _to_tensor(torch, v, device, dtype) for k, v in host.items()}
        self.inputs = [i.name for i in graph.input if i.name not in host]
        dims = [i.type.tensor_type.shape.dim for i in graph.input if i.name in self.inputs]
        # A static batch (the dynamo exporter's default) is baked into Reshape shapes too.
        self.batch = dims[0][0].dim_value if dims and dims[0] and dims[0][0].dim_value else None
        self.outputs = [o.name for o in graph.output]
        self.steps = []
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            attrs = {a.name: _attr(a) for a in node.attribute}
            attrs["_outputs"], attrs["_opset"] = len(node.output), opset
            if dtype is not None and node.op_type == "Cast" and attrs["to"] == TensorProto.FLOAT:
                attrs["_as"] = dtype  # float32 means the compute precision here
            hosts = _HOST_INPUTS.get(node.op_type, set())
            if node.op_type == "Resize" and opset < 11:
                hosts = {1}
            args = []
            for i, name in enumerate(node.input):
                if not name:
                    args.append((1, None))
                elif i in hosts and name in host:
                    args.append((1, host[name].tolist()))
                else:
                    args.append((2 if i in hosts else 0, name))
            self.steps.append((ops[node.op_type], attrs, args, list(node.output)))

    def __call__(self, *inputs: Any) -> list[Any]:
        with _torch().inference_mode():
            return self.run(*inputs)

    def run(
        self, *inputs: Any, consts: dict[str, Any] | None = None, tensors: Sequence[str] = ()
    ) -> list[Any]:
        """The graph's outputs, then the intermediate `tensors` named, recording autograd as
        the caller's mode says (`__call__` runs under inference mode). `consts` replaces some
        initializers (trainable parameters)."""
        env = dict(self.consts)
        env.update(consts or {})
        env.update(zip(self.inputs, inputs, strict=True))
        n = inputs[0].shape[0] if inputs and inputs[0].dim() else None
        other_batch = self.batch is not None and n is not None and n != self.batch
        for fn, attrs, args, outs in self.steps:
            vals = [env[v] if k == 0 else v if k == 1 else env[v].tolist() for k, v in args]
            if other_batch and fn is _reshape:
                vals[1] = _rebatch(vals[0], vals[1], self.batch, n)
            result = fn(attrs, *vals)
            results = result if isinstance(result, tuple) else (result,)
            env.update(zip(outs, results, strict=False))  # unused extra outputs (BN, Dropout)
        return [env[n] for n in (*self.outputs, *tensors)]


def _attr(a: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(a)
    return value.decode() if isinstance(value, bytes) else value


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    value = helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value, dtype=np.float32 if "float" in a.name else np.int64)


def _to_tensor(torch: Any, array: np.ndarray, device: str, dtype: Any = None) -> Any:
    """Float constants go to the device (cast to `dtype` if given); integer ones (shapes,
    indices) stay on the host."""
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor
