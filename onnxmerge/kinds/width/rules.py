"""Per-op channel rules: how an ONNX node relates the channel axis (axis 1) of its tensors.

`RULES[op](c, node)` records the node's relations on a relations.Collector `c` (ties,
offsets, units, producer / consumer / tie roles) and returns '' or why the node fixes every
channel-bearing tensor it touches. An op without a rule fixes them too. The rules are listed
in groups.py's docstring (spec §2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.tensors import const, static_shape

if TYPE_CHECKING:
    from onnxmerge.kinds.width.relations import Collector

UNARY = frozenset(
    "Relu Clip LeakyRelu HardSwish HardSigmoid Sigmoid Tanh Elu Selu Celu Gelu Erf Identity "
    "Dropout Cast Neg Abs Exp Log Sqrt Softplus Softsign Mish Sin Cos Floor Ceil Round "
    "Reciprocal ThresholdedRelu Not Sign IsNaN IsInf Shrink".split()
)
ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Max Min Sum Mean Where Equal Greater Less GreaterOrEqual LessOrEqual "
    "And Or Xor Mod PRelu BitShift".split()
)
POOLS = frozenset("MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split())
REDUCE = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare".split()
)
SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
RESHAPE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def name_of(node: gs.Node) -> str:
    """A node's name, or its op and first output when the exporter left it unnamed."""
    return node.name or f"{node.op}->{node.outputs[0].name if node.outputs else '?'}"


def bearing(t: gs.Tensor | None) -> bool:
    """Whether `t` is a named Variable of static shape with a channel axis (rank >= 2)."""
    if not isinstance(t, gs.Variable) or not t.name:
        return False
    shape = static_shape(t)
    return shape is not None and len(shape) >= 2


def _axis(node: gs.Node, default: int, rank: int) -> int:
    a = int(node.attrs.get("axis", default))
    return a + rank if a < 0 else a


def _ints(node: gs.Node, attr: str, index: int) -> tuple[bool, list[int] | None]:
    """(known, values) of an int list given as attribute `attr` or input `index`.

    (True, None) when absent; (False, None) when the input is computed, not constant.
    """
    if attr in node.attrs:
        return True, [int(v) for v in node.attrs[attr]]
    if len(node.inputs) > index and node.inputs[index].name:
        v = const(node.inputs[index])
        return (v is not None), (None if v is None else [int(x) for x in np.ravel(v)])
    return True, None


def _x(node: gs.Node) -> tuple[gs.Tensor, gs.Tensor]:
    return node.inputs[0], node.outputs[0]


def _conv(c: Collector, node: gs.Node) -> str:
    """Conv, and ConvTranspose (weight (C_in, C_out / group, ...): the same roles)."""
    x, y = _x(node)
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "weights are not constant"
    if len(node.inputs) > 2 and node.inputs[2].name and const(node.inputs[2]) is None:
        return "bias is not constant"
    group = int(node.attrs.get("group", 1))
    if group == x.shape[1] == y.shape[1] > 1:
        c.tie(node, x, y)
        c.role("tie", node, y)
        return ""
    if group > 1 and node.op == "ConvTranspose":
        return f"grouped ConvTranspose (group={group})"
    # Any other grouping: each conv group must keep as many channels as the others, on each
    # side (groups.py checks; a multiplier depthwise conv's input, one channel per group,
    # stays whole). The rows slice as a dense conv's; the columns per conv group.
    c.role("consumer", node, x)
    c.role("producer", node, y)
    if group > 1:
        c.split(x, group)
        c.split(y, group)
    return ""


def _gemm(c: Collector, node: gs.Node) -> str:
    a, y = _x(node)
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or not bearing(a) or w.ndim != 2:
        return "weights are not a constant matrix"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "transposed input"
        if len(node.inputs) > 2 and node.inputs[2].name and const(node.inputs[2]) is None:
            return "bias is not constant"
    elif len(a.shape) > 2:  # MatMul over the last axis: axis 1 is not contracted
        c.tie(node, a, y)
        return ""
    c.role("consumer", node, a)
    c.role("producer", node, y)
    return ""


def _unary(c: Collector, node: gs.Node) -> str:
    for y in node.outputs:
        c.tie(node, node.inputs[0], y)
    return ""


def _elementwise(c: Collector, node: gs.Node) -> str:
    y = node.outputs[0]
    rank, width = len(y.shape), y.shape[1]
    for t in node.inputs:
        if not t.name:
            continue
        shape = np.shape(const(t)) if isinstance(t, gs.Constant) else static_shape(t)
        ax = 1 - (rank - len(shape))
        dim = shape[ax] if ax >= 0 else 1
        if isinstance(t, gs.Constant):
            if dim == width and width > 1:
                c.role("tie", node, y)
            elif dim != 1:
                return f"constant of shape {tuple(shape)} does not broadcast per channel"
        elif len(shape) == rank and dim == width:
            c.tie(node, t, y)
        elif dim != 1:
            return f"operand {t.name!r} of shape {tuple(shape)} holds channels on another axis"
    return ""


def _pool(c: Collector, node: gs.Node) -> str:
    if len(node.outputs) > 1 and node.outputs[1].name and node.outputs[1].outputs:
        return "pooling indices span channels"
    c.tie(node, *_x(node))
    return ""


def _norm(c: Collector, node: gs.Node) -> str:
    if len([t for t in node.outputs if t.name]) != 1 or node.attrs.get("training_mode", 0):
        return "training-mode normalization"
    if any(const(t) is None for t in node.inputs[1:] if t.name):
        return "parameters are not constant"
    c.tie(node, *_x(node))
    c.role("tie", node, node.outputs[0])
    return ""


def _spatial(c: Collector, node: gs.Node) -> str:
    """Resize, Upsample, Pad: tie when axes 0 and 1 keep their size and padding."""
    x, y = _x(node)
    if tuple(x.shape[:2]) != tuple(y.shape[:2]):
        return "resizes the channel axis"
    if node.op == "Pad":
        known, pads = _ints(node, "pads", 1)
        _, axes = _ints(node, "axes", 3)
        if not known or pads is None:
            return "pads are not constant"
        axes = [a + len(x.shape) if a < 0 else a for a in (axes or range(len(x.shape)))]
        if 1 in axes and (pads[axes.index(1)] or pads[axes.index(1) + len(axes)]):
            return "pads the channel axis"
    elif any(t.name and const(t) is None for t in node.inputs[1:]):
        return "scales or sizes are computed"
    c.tie(node, x, y)
    return ""


def _concat(c: Collector, node: gs.Node) -> str:
    y = node.outputs[0]
    if _axis(node, 1, len(y.shape)) != 1:
        for t in node.inputs:
            c.tie(node, t, y)
        return ""
    off = 0
    for t in node.inputs:
        if not bearing(t):
            return "a constant or unknown input on the channel axis"
        c.offset(node, t, y, off)
        off += t.shape[1]
    return ""


def _split(c: Collector, node: gs.Node) -> str:
    x = node.inputs[0]
    if _axis(node, 0, len(x.shape)) != 1:
        for y in node.outputs:
            c.tie(node, x, y)
        return ""
    if len(node.inputs) > 1 and node.inputs[1].name and const(node.inputs[1]) is None:
        return "split sizes are computed"
    off = 0
    for y in node.outputs:
        if bearing(y):
            c.offset(node, y, x, off)
        off += y.shape[1] if bearing(y) else 0
    return ""


def _slice(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    old = c.opset < 10
    k1, starts = _ints(node, "starts", 1) if old else _ints(node, "", 1)
    k2, ends = _ints(node, "ends", 2) if old else _ints(node, "", 2)
    k3, axes = _ints(node, "axes", 3) if old else _ints(node, "", 3)
    k4, steps = (True, None) if old else _ints(node, "", 4)
    if not (k1 and k2 and k3 and k4) or starts is None or ends is None:
        return "starts, ends, axes or steps are computed"
    axes = [a + len(x.shape) if a < 0 else a for a in (axes or range(len(starts)))]
    if 1 not in axes:
        c.tie(node, x, y)
        return ""
    j = axes.index(1)
    if steps is not None and steps[j] != 1:
        return "strided Slice on the channel axis"
    start = starts[j] + x.shape[1] if starts[j] < 0 else starts[j]
    c.offset(node, y, x, min(max(start, 0), x.shape[1]))
    return ""


def _reshape(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    if node.op == "Reshape" and const(node.inputs[1]) is None:
        return "the target shape is computed"
    if node.op == "Flatten" and _axis(node, 1, len(x.shape)) != 1:
        return "flattens the channel axis into the batch"
    si, so = tuple(x.shape), tuple(y.shape)
    if si[:2] == so[:2] and int(np.prod(si)) == int(np.prod(so)):
        c.tie(node, x, y)
    elif len(so) == 2 and so[0] == si[0] and so[1] == int(np.prod(si[1:])):
        c.rel.units[y.name] = c.rel.unit(x.name) * int(np.prod(si[2:]))
        c.rel.links.append((x.name, y.name, 0))  # channel c <-> features [c*HW, (c+1)*HW)
    else:
        return f"moves the channel axis ({si} -> {so})"
    return ""


def _transpose(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    perm = list(node.attrs.get("perm", range(len(x.shape) - 1, -1, -1)))
    if perm[:2] != [0, 1]:
        return f"moves the channel axis (perm={perm})"
    c.tie(node, x, y)
    return ""


def _reduce(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    known, axes = _ints(node, "axes", 1)
    if node.op in ("ArgMax", "ArgMin"):
        known, axes = True, [int(node.attrs.get("axis", 0))]
    if not known:
        return "reduction axes are computed"
    axes = [a + len(x.shape) if a < 0 else a for a in (axes or range(len(x.shape)))]
    if 1 in axes:
        return "reduces over channels"
    if 0 in axes and not node.attrs.get("keepdims", 1):
        return "drops the batch axis"
    c.tie(node, x, y)
    return ""


def _softmax(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    axis = _axis(node, -1 if c.opset >= 13 else 1, len(x.shape))
    if axis == 1 or (c.opset < 13 and axis <= 1):
        return "normalizes over channels"
    c.tie(node, x, y)
    return ""


def _layernorm(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    if _axis(node, -1, len(x.shape)) <= 1:
        return "normalizes over channels"
    c.tie(node, x, y)
    return ""


def _gather(c: Collector, node: gs.Node) -> str:
    x, y = _x(node)
    idx = node.inputs[1]
    axis = _axis(node, 0, len(x.shape))
    if axis == 1:
        return "gathers along the channel axis"
    if len(x.shape) != len(y.shape) or (axis == 0 and len(idx.shape or ()) != 1):
        return "changes the tensor's rank"
    c.tie(node, x, y)
    return ""


Rule = Callable[["Collector", gs.Node], str]
RULES: dict[str, Rule] = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _gemm,
    "BatchNormalization": _norm,
    "InstanceNormalization": _norm,
    "Resize": _spatial,
    "Upsample": _spatial,
    "Pad": _spatial,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Transpose": _transpose,
    "ArgMax": _reduce,
    "ArgMin": _reduce,
    "LayerNormalization": _layernorm,
    "Gather": _gather,
    "Shape": lambda c, n: "reads the channel count",
    "Size": lambda c, n: "reads the channel count",
    "LRN": lambda c, n: "normalizes over channels",
    "GroupNormalization": lambda c, n: "normalizes over channel groups",
    **{op: _unary for op in UNARY},
    **{op: _elementwise for op in ELEMENTWISE},
    **{op: _pool for op in POOLS},
    **{op: _reduce for op in REDUCE},
    **{op: _softmax for op in SOFTMAX},
    **{op: _reshape for op in RESHAPE},
}
