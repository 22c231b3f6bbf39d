"""An ONNX graph executed op by op with torch: the torch latency backend and fine-tuning.

There is no ONNX->torch converter in PyTorch itself, so a small interpreter executes the ops
onnxmerge emits (Conv, Add, the activations) plus the ones common CNNs need end to end.
Ops are checked when the graph is loaded: an unsupported one fails at once, by name.
`TorchGraph.run` records autograd when the caller's mode does (onnxmerge.finetune trains
through it); `__call__` runs under inference mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.errors import OnnxMergeError
from onnxmerge.geometry import auto_pads


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise OnnxMergeError("this needs PyTorch: pip install 'onnxmerge[torch]'") from None
    return torch


# Inputs that carry shapes/axes/bounds: passed to the op as Python values, not tensors.
_HOST_INPUTS = {"Clip": {1, 2}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Pad": {1, 2, 3},
                "Resize": {1, 2, 3}, "Slice": {1, 2, 3, 4}}  # fmt: skip
_HOST_INPUTS.update(
    {op: {1} for op in ("Reshape", "ReduceMean", "Split", "Squeeze", "Unsqueeze", "Expand")}
)
_UNARY = {k: k.lower() for k in ("Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Abs", "Neg")}
_UNARY["Reciprocal"] = "reciprocal"
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "MatMul": "matmul"}


def _spatial_pads(a: dict, x: Any, kernel: list[int]) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial dims, resolving auto_pad."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        return list(a.get("pads", [0] * 2 * n))
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    return list(auto_pads(auto, list(x.shape[2:]), kernel, strides, dil))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, e1, e2] -> torch F.pad order (last dim first)."""
    n = len(pads) // 2
    return [v for i in reversed(range(n)) for v in (pads[i], pads[i + n])]


def _pad_input(x: Any, pads: list[int], kernel: list[int], value: float) -> tuple[Any, list]:
    """Pad explicitly unless torch's symmetric ``padding=`` can do it; return (x, padding)."""
    n = len(kernel)
    begin, end = pads[:n], pads[n:]
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True)):
        return x, begin
    if any(pads):
        x = _torch().nn.functional.pad(x, _torch_pad(pads), value=value)
    return x, [0] * n


def _conv(a: dict, x: Any, w: Any, b: Any = None) -> Any:
    F = _torch().nn.functional
    kernel = list(w.shape[2:])
    x, padding = _pad_input(x, _spatial_pads(a, x, kernel), kernel, 0.0)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    ones = [1] * len(kernel)
    return conv(
        x, w, b, a.get("strides", ones), padding, a.get("dilations", ones), a.get("group", 1)
    )


def _pool(kind: str) -> Callable[..., Any]:
    def run(a: dict, x: Any) -> Any:
        F = _torch().nn.functional
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        pads = _spatial_pads(a, x, kernel)
        strides, ceil = a.get("strides", [1] * n), bool(a.get("ceil_mode", 0))
        if kind == "max":
            x, padding = _pad_input(x, pads, kernel, -math.inf)
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return fn(x, kernel, strides, padding, a.get("dilations", [1] * n), ceil)
        include = bool(a.get("count_include_pad", 0))
        x2, padding = _pad_input(x, pads, kernel, 0.0)
        if x2 is not x and not include:
            raise OnnxMergeError("torch backend: AveragePool with uneven pads excluding padding")
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return fn(x2, kernel, strides, padding, ceil, include)

    return run


def _clip(a: dict, x: Any, lo: Any = None, hi: Any = None) -> Any:
    lo = a.get("min", lo)  # opset < 11 keeps the bounds in attributes
    hi = a.get("max", hi)
    return _torch().clamp(x, lo, hi)


def _prelu(a: dict, x: Any, slope: Any) -> Any:
    torch = _torch()
    if x.dim() >= 2 and slope.numel() == x.shape[1] and slope.numel() > 1:
        return torch.nn.functional.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


def _gemm(a: dict, x: Any, w: Any, c: Any = None) -> Any:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = (x @ w) * a.get("alpha", 1.0)
    return y if c is None else y + c * a.get("beta", 1.0)


def _div(a: dict, x: Any, y: Any) -> Any:
    return x / y if x.is_floating_point() else _torch().div(x, y, rounding_mode="trunc")


def _reshape(a: dict, x: Any, shape: list[int]) -> Any:
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _rebatch(x: Any, shape: list[int], static: int, n: int) -> list[int]:
    """A Reshape target that spells out the graph's static batch `static`, for a run at batch
    `n`: the leading `static` becomes `n` when `x` leads with the run's batch (a batch-1
    export's Flatten-as-Reshape to [1, C] reshapes a batch of 16 to [16, C])."""
    if shape and shape[0] == static and x.dim() and x.shape[0] == n:
        return [n, *shape[1:]]
    return shape


def _axes(a: dict, axes: Any) -> list[int] | None:
    return list(a["axes"]) if "axes" in a else axes


def _reduce_mean(a: dict, x: Any, axes: Any = None) -> Any:
    axes = _axes(a, axes)
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return x.mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))


def _unsqueeze(a: dict, x: Any, axes: Any = None) -> Any:
    rank = x.dim() + len(_axes(a, axes))
    for axis in sorted(v % rank for v in _axes(a, axes)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(a: dict, x: Any, axes: Any = None) -> Any:
    axes = _axes(a, axes)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(v % x.dim() for v in axes))


def _slice(a: dict, x: Any, starts=None, ends=None, axes=None, steps=None) -> Any:
    starts, ends = a.get("starts", starts), a.get("ends", ends)
    axes = _axes(a, axes) or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        if st < 1:
            raise OnnxMergeError("torch backend: Slice with a negative step is not supported")
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


def _pad(a: dict, x: Any, pads: Any = None, value: Any = None, axes: Any = None) -> Any:
    pads = list(a.get("pads", pads))
    value = float(a.get("value", value or 0.0))
    axes = [v % x.dim() for v in (axes or range(x.dim()))]
    full = [0] * (2 * x.dim())
    for i, ax in enumerate(axes):
        full[ax], full[ax + x.dim()] = pads[i], pads[i + len(axes)]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[
        a.get("mode", "constant")
    ]
    torch_pads = _torch_pad(full)
    while len(torch_pads) > 2 and not any(torch_pads[-2:]):
        torch_pads = torch_pads[:-2]  # reflect/replicate refuse padding of batch/channels
    if mode == "constant":
        return _torch().nn.functional.pad(x, torch_pads, value=value)
    return _torch().nn.functional.pad(x, torch_pads, mode=mode)


def _resize(a: dict, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Any:
    if a["_opset"] < 11:  # Resize-10 is (X, scales)
        scales = roi
    if sizes:
        size = [int(v) for v in sizes[2:]]
    else:
        size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], scales[2:], strict=True)]
    mode = a.get("mode", "nearest")
    if mode == "nearest":
        return _torch().nn.functional.interpolate(x, size=size, mode="nearest")
    names = {1: "linear", 2: "bilinear", 3: "trilinear"} if mode == "linear" else {2: "bicubic"}
    if len(size) not in names:
        raise OnnxMergeError(f"torch backend: Resize mode {mode!r} on {len(size)}-D maps")
    corners = a.get("coordinate_transformation_mode") == "align_corners"
    return _torch().nn.functional.interpolate(
        x, size=size, mode=names[len(size)], align_corners=corners
    )


def _split(a: dict, x: Any, split: Any = None) -> tuple:
    axis, split = a.get("axis", 0), a.get("split", split)
    if split is None:
        parts = a.get("num_outputs", a["_outputs"])
        split = math.ceil(x.shape[axis] / parts)
    return tuple(_torch().split(x, split, dim=axis))


def _gather(a: dict, x: Any, idx: Any) -> Any:
    axis = a.get("axis", 0) % x.dim()
    idx = idx.to(x.device)
    idx = _torch().where(idx < 0, idx + x.shape[axis], idx)
    flat = x.index_select(axis, idx.reshape(-1))
    return flat.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])


def _cast(a: dict, x: Any) -> Any:
    if "_as" in a:
        return x.to(a["_as"])
    np_dtype = helper.tensor_dtype_to_np_dtype(a["to"])
    return x.to(_torch().from_numpy(np.zeros(0, np_dtype)).dtype)


def _softmax(a: dict, x: Any) -> Any:
    return _torch().softmax(x, a.get("axis", -1 if a["_opset"] >= 13 else 1))


def _constant_of_shape(a: dict, shape: list[int]) -> Any:
    torch = _torch()
    value = a.get("value")
    v = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    return torch.full(list(shape), v.reshape(-1)[0].item(), dtype=torch.as_tensor(v.copy()).dtype)


def _range(a: dict, start: Any, limit: Any, delta: Any) -> Any:
    torch = _torch()
    ints = all(isinstance(v, int) for v in (start, limit, delta))
    return torch.arange(start, limit, delta, dtype=torch.int64 if ints else torch.float32)


def _ops() -> dict[str, Callable[..., Any]]:
    torch = _torch()
    F = torch.nn.functional
    ops: dict[str, Callable[..., Any]] = {
        "Conv": _conv,
        "Clip": _clip,
        "PRelu": _prelu,
        "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
        "HardSigmoid": lambda a, x: torch.clamp(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
        "HardSwish": lambda a, x: F.hardswish(x),
        "Gelu": lambda a, x: F.gelu(x, approximate=a.get("approximate", "none")),
        "Div": _div,
        "MaxPool": _pool("max"),
        "AveragePool": _pool("avg"),
        "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "ReduceMean": _reduce_mean,
        "Flatten": lambda a, x: x.reshape(math.prod(x.shape[: a.get("axis", 1)]), -1),
        "Reshape": _reshape,
        "Gemm": _gemm,
        "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
        "Pad": _pad,
        "Slice": _slice,
        "Split": _split,
        "Resize": _resize,
        "BatchNormalization": lambda a, x, s, b, m, v: F.batch_norm(
            x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5)
        ),
        "Identity": lambda a, x: x,
        "Dropout": lambda a, x, *_: x,
        "Shape": lambda a, x: torch.tensor(x.shape[a.get("start", 0) : a.get("end")]),
        "Gather": _gather,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Transpose": lambda a, x: x.permute(a.get("perm", list(range(x.dim()))[::-1])),
        "Softmax": _softmax,
        "Cast": _cast,
        "ConstantOfShape": _constant_of_shape,
        "Expand": lambda a, x, shape: x.expand(torch.broadcast_shapes(x.shape, tuple(shape))),
        "Range": _range,
    }
    ops.update({k: (lambda fn: lambda a, x: fn(x))(getattr(torch, v)) for k, v in _UNARY.items()})
    ops.update(
        {k: (lambda fn: lambda a, x, y: fn(x, y))(getattr(torch, v)) for k, v in _BINARY.items()}
    )
    return ops


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
            raise OnnxMergeError(f"torch backend does not support op(s): {', '.join(bad)}")
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
