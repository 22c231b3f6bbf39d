"""ONNX ops in torch: what onnxmerge.torch_graph's interpreter runs, one function per op.

Each takes (attributes, *inputs) with the inputs listed in _HOST_INPUTS as Python values
(shapes, axes, bounds) and the others as tensors, and follows the ONNX operator spec;
torch's symmetric `padding=` is used where it can express the ONNX pads, explicit padding
or cropping otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

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


def _conv_transpose(a: dict, x: Any, w: Any, b: Any = None) -> Any:
    """torch's transposed conv without padding, then the ONNX pads cropped off (begin and end
    may differ; output_padding extends the end first, as the ONNX spec's output size says)."""
    F = _torch().nn.functional
    n = w.dim() - 2
    if a.get("output_shape") or (a.get("auto_pad", "NOTSET") or "NOTSET") != "NOTSET":
        raise OnnxMergeError("torch backend: ConvTranspose with output_shape or auto_pad")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    ones, pads = [1] * n, list(a.get("pads", [0] * 2 * n))
    y = fn(x, w, b, a.get("strides", ones), 0, list(a.get("output_padding", [0] * n)),
           a.get("group", 1), a.get("dilations", ones))  # fmt: skip
    crop = [slice(p, y.shape[2 + i] - pads[n + i]) for i, p in enumerate(pads[:n])]
    return y[(slice(None), slice(None), *crop)]


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
        "ConvTranspose": _conv_transpose,
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
