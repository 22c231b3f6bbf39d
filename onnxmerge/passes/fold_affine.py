"""Fold per-channel affine ops that follow a Conv into its weight and bias.

BatchNormalization (inference mode): y = (x - mean) * gamma / sqrt(var + eps) + beta, so with
a = gamma / sqrt(var + eps): W' = W * a[o], b' = (b - mean) * a + beta (eps read from the node).
Mul by a per-channel constant c: W' = W * c[o], b' = b * c. Add of a per-channel constant d:
b' = b + d. Exact everywhere (they act after the conv's zero padding); compose.fold_affine
does the arithmetic.


Preconditions, each checked (an op that fails one stays in the graph):
- the conv output feeds only this op and is not a graph output;
- the other operand is a constant whose broadcast with the conv output (N, C, H, W) is exactly
  (N, C, H, W): a scalar or (C,)-per-channel value of rank <= 4, never one that adds a
  dimension (a (1,1,1,1,1) constant makes the output 5-D) or varies over H or W;
- Sub and Div only with the conv output first, Div only by non-zero values;
- BatchNormalization in inference mode, one output, `spatial` = 1 (opsets < 9), parameters of
  shape (C,).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.compose import fold_affine
from onnxmerge.graph.conv import conv_spec, read_linear, set_weights
from onnxmerge.graph.names import Names
from onnxmerge.graph.tensors import const, is_graph_output


def per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A float constant that broadcasts per channel over NCHW without changing its shape, as (C,).

    Scalars of rank <= 4, (1, C, 1, 1), (C, 1, 1) and the rank-matching ones with ones around
    C. None for anything else (other ranks, spatial variation, integer dtypes).
    """
    if value is None:
        return None
    v = np.asarray(value)
    if v.ndim > 4 or not np.issubdtype(v.dtype, np.floating):
        return None
    shape = (1,) * (4 - v.ndim) + tuple(v.shape)
    if shape == (1, 1, 1, 1):
        return np.full(channels, float(v.reshape(())), dtype=np.float64)
    if shape == (1, channels, 1, 1):
        return v.reshape(channels).astype(np.float64)
    return None


def affine_of(node: gs.Node, conv_out: gs.Tensor, channels: int):
    """(scale, shift) per channel if `node` is a foldable affine op on conv_out, else None."""
    if node.op == "BatchNormalization" and node.inputs[0] is conv_out:
        if node.attrs.get("training_mode", 0) or not node.attrs.get("spatial", 1):
            return None
        if len([t for t in node.outputs if t.name]) != 1:
            return None
        params = [const(t) for t in node.inputs[1:5]]
        if any(p is None or np.shape(p) != (channels,) for p in params):
            return None
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        a = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return a, beta - mean * a
    if node.op in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2:
        others = [t for t in node.inputs if t is not conv_out]
        if len(others) != 1 or (node.op in ("Sub", "Div") and node.inputs[0] is not conv_out):
            return None
        c = per_channel(const(others[0]), channels)
        if c is None:
            return None
        if node.op == "Mul":
            return c, np.zeros(channels)
        if node.op == "Div":
            return (1.0 / c, np.zeros(channels)) if np.all(c != 0) else None
        return np.ones(channels), (c if node.op == "Add" else -c)
    return None


def fold_affine_into_conv(graph: gs.Graph, names: Names | None = None) -> int:
    """Fold BatchNormalization / per-channel Mul, Add, Sub, Div following a Conv. Repeats."""
    names = names or Names.of_graph(graph)
    count = 0
    changed = True
    while changed:
        changed = False
        for conv in list(graph.nodes):
            if conv.op != "Conv" or conv_spec(conv) is None:
                continue
            out = conv.outputs[0]
            if len(out.outputs) != 1 or is_graph_output(graph, out):
                continue
            follower = out.outputs[0]
            affine = affine_of(follower, out, int(const(conv.inputs[1]).shape[0]))
            if affine is None:
                continue
            lin = fold_affine(read_linear(conv), *affine)
            set_weights(conv, lin, names, f"{conv.name or 'conv'}_folded")
            conv.outputs = [t for t in follower.outputs if t.name][:1]
            follower.outputs.clear()
            count += 1
            changed = True
    return count
