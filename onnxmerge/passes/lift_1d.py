"""Lift 1-D conv runs to 2-D convs of height 1, so that depth compression merges them.

A 1-D conv over N x C x L equals a 2-D conv over N x C x 1 x L with kernel 1 x k (strides,
dilations and pads on the second axis; graph.conv.lift_1d), between Unsqueeze and Squeeze of
that unit axis. tf2onnx writes Keras' Conv1D exactly so: Unsqueeze -> Conv (2-D) -> Squeeze.
Between two such convs sit only elementwise ops (ReLU, a BatchNorm's Mul and Add), so a
Squeeze moved past them meets the next Unsqueeze and both vanish:

    Squeeze_a(x) -> op -> ... -> Unsqueeze_a   ==   op' -> ... (on x itself)

where op' is op on the unsqueezed tensors, each constant operand given the unit axis too (a
constant broadcasts from the right: one of rank d gets a 1 inserted where axis `a` lands,
unless it lies wholly to the right of it; Clip's bounds are scalars). Exact: elementwise
ops commute with reshapes that keep the element order. Depth's matcher then finds ordinary
2-D chains; the merged network keeps the 2-D convs (ONNX Runtime runs 1-D convs as 2-D).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.conv import lift_1d
from onnxmerge.graph.names import Names
from onnxmerge.graph.tensors import const, static_shape

ELEMENTWISE = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Clip", "Neg", "Abs",
    "Identity", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
}  # fmt: skip
AXIS = 2  # the unit axis 1-D convs are lifted on (N x C x 1 x L)


def _axes(node: gs.Node) -> list[int] | None:
    """A Squeeze's or Unsqueeze's constant axes (attribute before opset 13, input after)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    value = const(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if value is None else [int(a) for a in np.ravel(value)]


def _reshape_node(graph: gs.Graph, names: Names, op: str, x, y, base: str) -> gs.Node:
    """Squeeze or Unsqueeze of AXIS, spelled for the graph's opset."""
    if (graph.opset or 13) >= 13:
        axes = gs.Constant(names.fresh(base, "axes"), np.array([AXIS], np.int64))
        return gs.Node(op, names.fresh(base, op.lower()), inputs=[x, axes], outputs=[y])
    return gs.Node(op, names.fresh(base, op.lower()), {"axes": [AXIS]}, [x], [y])


def lift_conv1d(graph: gs.Graph, names: Names | None = None) -> int:
    """Rewrite every 1-D Conv (constant weight, static N x C x L input) as Unsqueeze ->
    2-D Conv -> Squeeze. Returns the count."""
    names = names or Names.of_graph(graph)
    done = 0
    for node in list(graph.nodes):
        w = const(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
        shape = static_shape(node.inputs[0]) if w is not None else None
        y_shape = static_shape(node.outputs[0]) if w is not None else None
        if w is None or w.ndim != 3 or shape is None or len(shape) != 3 or y_shape is None:
            continue
        x, y = node.inputs[0], node.outputs[0]
        x4 = gs.Variable(names.fresh(node.name, "in2d"), x.dtype, _unit(shape))
        y4 = gs.Variable(names.fresh(node.name, "out2d"), y.dtype, _unit(y_shape))
        node.inputs[0] = x4
        node.inputs[1] = gs.Constant(names.fresh(node.name, "w2d"), w[:, :, None, :])
        node.attrs = {**lift_1d(node.attrs), "kernel_shape": [1, int(w.shape[2])]}
        node.outputs[0] = y4
        graph.nodes.append(_reshape_node(graph, names, "Unsqueeze", x, x4, node.name))
        graph.nodes.append(_reshape_node(graph, names, "Squeeze", y4, y, node.name))
        done += 1
    return done


def _unit(shape) -> list[int]:
    """A 3-D shape with the unit axis inserted at AXIS."""
    return [*shape[:AXIS], 1, *shape[AXIS:]]


def _lifted_const(value: np.ndarray, rank: int) -> np.ndarray:
    """A constant that broadcast against a rank-`rank` tensor, for its rank + 1 version with a
    unit axis at AXIS (None when it cannot be lifted)."""
    after = rank - AXIS  # axes of the squeezed tensor to the right of the unit axis
    if value.ndim <= after:
        return value
    at = value.ndim - after
    return value.reshape(*value.shape[:at], 1, *value.shape[at:])


def sink_squeezes(graph: gs.Graph, names: Names | None = None) -> int:
    """Move each Squeeze of AXIS (of a 4-D tensor) past the elementwise ops that read it, and
    drop Squeeze -> Unsqueeze pairs of AXIS. Returns the number of ops moved or pairs dropped."""
    names = names or Names.of_graph(graph)
    done = 0
    graph.toposort()
    for node in list(graph.nodes):
        shape = static_shape(node.outputs[0]) if len(node.outputs) == 1 else None
        if node.op in ELEMENTWISE and shape is not None and len(shape) == 3:
            lifted = _lift_inputs(node, names)
            if lifted is None:
                continue
            out = node.outputs[0]
            out4 = gs.Variable(names.fresh(out.name, "2d"), out.dtype, _unit(shape))
            for i, t in enumerate(lifted):
                node.inputs[i] = t
            node.outputs[0] = out4
            graph.nodes.append(_reshape_node(graph, names, "Squeeze", out4, out, node.name))
            done += 1
        elif node.op == "Unsqueeze" and _axes(node) == [AXIS]:
            src = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
            if _is_squeeze(src) and not any(t is node.outputs[0] for t in graph.outputs):
                _replace_uses(node.outputs[0], src.inputs[0])
                done += 1
        graph.toposort()
    return done


def _is_squeeze(node: gs.Node | None) -> bool:
    shape = static_shape(node.inputs[0]) if node is not None and node.op == "Squeeze" else None
    return shape is not None and len(shape) == 4 and shape[AXIS] == 1 and _axes(node) == [AXIS]


def _lift_inputs(node: gs.Node, names: Names) -> list | None:
    """`node`'s inputs with each Squeeze of AXIS undone and constants lifted, or None when some
    variable input is not such a Squeeze's output (or none is)."""
    out, rank, seen = [], 3, False
    for t in node.inputs:
        src = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
        if _is_squeeze(src):
            out.append(src.inputs[0])
            seen = True
        elif isinstance(t, gs.Constant) or not t.name:
            value = const(t) if t.name else None
            if value is None or node.op in ("Clip",) or value.ndim == 0:
                out.append(t)
            else:
                out.append(gs.Constant(names.fresh(t.name, "2d"), _lifted_const(value, rank)))
        else:
            return None
    return out if seen else None


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
