"""Fold per-channel affine ops that follow a Conv into its weight and bias.

BatchNormalization (inference mode): y = (x - mean) * gamma / sqrt(var + eps) + beta, so with
a = gamma / sqrt(var + eps): W' = W * a[o], b' = (b - mean) * a + beta (eps read from the node).
Mul by a per-channel constant c: W' = W * c[o], b' = b * c. Add of a per-channel constant d:
b' = b + d. Exact everywhere (they act after the conv's zero padding).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.ir import const, conv_spec, conv_weight


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A constant that broadcasts per output channel over NCHW, as a (C,) vector."""
    if value is None:
        return None
    v = np.asarray(value)
    if v.ndim == 0 or v.size == 1:
        return np.full(channels, v.reshape(()), dtype=np.float64)
    if v.ndim == 4 and v.shape[0] == 1 and v.shape[2:] == (1, 1) and v.shape[1] == channels:
        return v.reshape(channels).astype(np.float64)
    if v.ndim == 3 and v.shape[1:] == (1, 1) and v.shape[0] == channels:
        return v.reshape(channels).astype(np.float64)
    return None


def _affine_of(node: gs.Node, conv_out: gs.Tensor, channels: int):
    """(scale, shift) per channel if `node` is an affine op on conv_out, else None."""
    if node.op == "BatchNormalization" and node.inputs[0] is conv_out:
        if node.attrs.get("training_mode", 0) or len(node.outputs) != 1:
            return None
        params = [const(t) for t in node.inputs[1:5]]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        a = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return a, beta - mean * a
    if node.op in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2:
        others = [t for t in node.inputs if t is not conv_out]
        if len(others) != 1 or (node.op in ("Sub", "Div") and node.inputs[0] is not conv_out):
            return None
        c = _per_channel(const(others[0]), channels)
        if c is None:
            return None
        if node.op == "Mul":
            return c, np.zeros(channels)
        if node.op == "Div":
            return (1.0 / c, np.zeros(channels)) if np.all(c != 0) else None
        return np.ones(channels), (c if node.op == "Add" else -c)
    return None


def fold_affine_into_conv(graph: gs.Graph) -> int:
    """Fold BatchNormalization / per-channel Mul, Add, Sub, Div following a Conv. Repeats."""
    count = 0
    changed = True
    while changed:
        changed = False
        for conv in list(graph.nodes):
            if conv.op != "Conv" or conv_spec(conv) is None:
                continue
            out = conv.outputs[0]
            if len(out.outputs) != 1 or any(t is out for t in graph.outputs):
                continue
            follower = out.outputs[0]
            w, b = conv_weight(conv)
            affine = _affine_of(follower, out, w.shape[0])
            if affine is None:
                continue
            scale, shift = affine
            new_w = (w.astype(np.float64) * scale[:, None, None, None]).astype(w.dtype)
            new_b = (b.astype(np.float64) * scale + shift).astype(w.dtype)
            conv.inputs[1] = gs.Constant(f"{conv.name}_W_folded{count}", new_w)
            bias = gs.Constant(f"{conv.name}_B_folded{count}", new_b)
            if len(conv.inputs) > 2:
                conv.inputs[2] = bias
            else:
                conv.inputs.append(bias)
            conv.outputs = list(follower.outputs)
            follower.outputs.clear()
            count += 1
            changed = True
    return count
