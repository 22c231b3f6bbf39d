"""Small helpers over onnx-graphsurgeon graphs shared by the matcher and the passes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import ConvSpec

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR


def const(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, or None for a variable (or a missing optional input)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = getattr(tensor, "shape", None)
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    return tuple(shape)


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def conv_weight(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (zeros when absent) of a Conv with constant inputs."""
    w = const(node.inputs[1])
    b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if b is None:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    return w, b


def _pads_from_auto(auto_pad: str, in_hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    before, after = [], []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, large = total // 2, total - total // 2
        before.append(large if auto_pad == "SAME_LOWER" else small)
        after.append(small if auto_pad == "SAME_LOWER" else large)
    return (before[0], before[1], after[0], after[1])


def conv_spec(node: gs.Node) -> ConvSpec | None:
    """The ConvSpec of a 2-D Conv with constant weights and a static input, else None."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return None
    w = const(node.inputs[1])
    if w is None or w.ndim != 4:
        return None
    has_bias = len(node.inputs) > 2 and node.inputs[2].name != ""
    if has_bias and const(node.inputs[2]) is None:
        return None
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return None
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", w.shape[2:]))
    stride = tuple(int(s) for s in node.attrs.get("strides", (1, 1)))
    dilation = tuple(int(d) for d in node.attrs.get("dilations", (1, 1)))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    in_hw = (shape[2], shape[3])
    if auto_pad in ("", "NOTSET"):
        p = [int(x) for x in node.attrs.get("pads", (0, 0, 0, 0))]
        pads = (p[0], p[1], p[2], p[3])
    else:
        pads = _pads_from_auto(auto_pad, in_hw, kernel, stride, dilation)
    groups = int(node.attrs.get("group", 1))
    return ConvSpec(
        name=node.name,
        in_channels=shape[1],
        out_channels=int(w.shape[0]),
        kernel=(kernel[0], kernel[1]),
        stride=(stride[0], stride[1]),
        dilation=(dilation[0], dilation[1]),
        pads=pads,
        groups=groups,
        in_hw=in_hw,
    )
