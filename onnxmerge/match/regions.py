"""Activation regions: the pointwise nodes between a conv's output and the next position.

An activation is recognised as the smallest closed pointwise region on the pre-activation
tensor t: nodes reading only t, each other and scalar or per-channel constants, so that the
region is a function applied to every element of t (per channel). Single ops (Relu,
LeakyRelu, PRelu, HardSwish, Gelu, Elu, ...) are known by name (activations.OP_KINDS), Clip by
its bounds, anything longer by what it computes (pointwise.kind_of on probe values): gated
forms x*f(x), decomposed GELU and HardSwish. An affine region (Add(x, x), a lone scale) is no
activation.

Trailing affine ops. After the region closes, Mul / Div / Add / Sub by a scalar or
per-channel constant that follow it one after another are taken along:
- a scale that brings the region to a registered kind (torch's GELU "* 0.5", HardSwish
  "/ 6") makes it that kind, and removing it is the identity;
- otherwise they are the activation's own affine (PP-LCNetV3's "learnable affine blocks",
  act -> Mul(c) -> Add(d)): removing the activation replaces the region by that affine map
  (its linear replacement, see activations.py), which the rewrite folds into the conv
  before it. A region that reads a residual Add keeps only an identity replacement (the
  affine would also scale the skip), so there the trailing ops stay outside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge import pointwise
from onnxmerge.activations import OP_KINDS
from onnxmerge.graph.tensors import const, is_graph_output
from onnxmerge.pointwise import clip_bounds

_POINTWISE = set(OP_KINDS) | {
    "Clip", "Mul", "Div", "Add", "Sub", "Erf", "Max", "Min", "Neg", "Pow", "Sqrt", "Exp",
    "Abs", "Log",
}  # fmt: skip
_AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
_MAX_REGION = 16

Affine = tuple[np.ndarray, np.ndarray]  # per-channel (scale, shift): y = scale * x + shift


def small_const(t: gs.Tensor, channels: int | None) -> bool:
    """A constant that is one value, or one per channel broadcast over NCHW (not over W)."""
    v = const(t)
    if v is None or v.ndim > 4:
        return False
    if v.size == 1:
        return True
    shape = (1,) * (4 - v.ndim) + tuple(v.shape)
    return channels is not None and shape == (1, channels, 1, 1)


def _probe(region: list[gs.Node], channels: int):
    """Probe input for a region: one channel unless a constant differs per channel."""
    per_channel = any(
        (v := const(t)) is not None and v.size > 1 for n in region for t in n.inputs if t.name
    )
    return pointwise.probe(channels if per_channel else 1)


def classify(nodes: list[gs.Node], source: gs.Tensor | None = None, channels: int = 1) -> str:
    """The activation kind of a region: by its op when single, else by what it computes."""
    ops = Counter(n.op for n in nodes)
    if len(nodes) == 1:
        n = nodes[0]
        if n.op == "Clip":
            lo, hi = clip_bounds(n)
            return (
                "relu6"
                if (lo, hi) == (0.0, 6.0)
                else ("relu" if lo == 0 and hi is None else "clip")
            )
        if n.op in OP_KINDS:
            return OP_KINDS[n.op]
    if source is not None:
        y = pointwise.evaluate(nodes, source, _probe(nodes, channels))
        kind = None if y is None else pointwise.kind_of(y)
        if kind is not None:
            return kind
    if ops["Erf"] or (ops["Tanh"] and ops["Pow"]):
        return "gelu"
    if ops["Sigmoid"] and ops["Mul"]:
        return "silu"
    if (ops["HardSigmoid"] or ops["Clip"]) and ops["Mul"]:
        return "hardswish"
    return "other"


def _inputs_ok(n: gs.Node, ids: set[int], channels: int) -> bool:
    return all(id(i) in ids or small_const(i, channels) or not i.name for i in n.inputs)


def _affine_step(graph: gs.Graph, out: gs.Tensor, channels: int) -> gs.Node | None:
    """The Mul / Div / Add / Sub by a small constant that alone reads `out`, if any."""
    if len(out.outputs) != 1 or is_graph_output(graph, out):
        return None
    nxt = out.outputs[0]
    if nxt.op not in _AFFINE_OPS or len(nxt.inputs) != 2 or len(nxt.outputs) != 1:
        return None
    if nxt.inputs[0] is not out and (nxt.op in ("Div", "Sub") or nxt.inputs[1] is not out):
        return None
    other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
    return nxt if small_const(other, channels) else None


def _normalizes(before: np.ndarray | None, after: np.ndarray | None) -> bool:
    """A trailing scale that brings the region's far slope to 1 (from something else)."""
    s0 = None if before is None else pointwise.far_slope(before)
    s1 = None if after is None else pointwise.far_slope(after)
    if s0 is None or s1 is None or np.allclose(s0, 1.0, rtol=1e-4):
        return False
    return bool(np.allclose(s1, 1.0, rtol=1e-4))


def _trailing(
    graph: gs.Graph, region: list[gs.Node], t: gs.Tensor, channels: int, residual: bool
) -> tuple[list[gs.Node], int, Affine | None]:
    """The trailing affine ops to take along, how many of them belong to the activation
    itself, and the affine that replaces the region (None: the identity)."""
    tail: list[gs.Node] = []
    while len(region) + len(tail) < _MAX_REGION:
        nxt = _affine_step(graph, (tail or region)[-1].outputs[0], channels)
        if nxt is None:
            break
        tail.append(nxt)
    if not tail:
        return [], 0, None
    x = _probe(region + tail, channels)
    before = pointwise.evaluate(region, t, x)
    core = 0  # trailing ops that belong to the activation itself (removed as the identity)
    for n in range(len(tail), 0, -1):
        y = pointwise.evaluate(region + tail[:n], t, x)
        if y is not None and (pointwise.kind_of(y) is not None or _normalizes(before, y)):
            core = n
            break
    rest = tail[core:]
    if not rest or residual:
        return tail[:core], core, None
    y = pointwise.evaluate(
        rest, region[-1].outputs[0] if not core else tail[core - 1].outputs[0], x
    )
    coef = None if y is None else pointwise.affine_coefficients(y)
    if coef is None:
        return tail[:core], core, None
    scale, shift = (np.broadcast_to(c, (channels,)).astype(np.float64) for c in coef)
    if np.allclose(scale, 1.0) and np.allclose(shift, 0.0):
        return tail, core, None
    return tail, core, (scale, shift)


@dataclass
class Region:
    """An activation region: its nodes, output tensor, kind, and what replaces it when the
    activation is removed (a per-channel affine, or None for the identity)."""

    nodes: list[gs.Node]
    output: gs.Tensor
    kind: str | None = None
    affine: Affine | None = None


def activation_region(
    graph: gs.Graph, t: gs.Tensor, channels: int, residual: bool = False
) -> Region:
    """The activation region reading `t` (no nodes and kind None when there is none).

    `residual` says `t` is a residual Add's output (then the replacement is the identity).
    """
    if is_graph_output(graph, t) or not t.outputs:
        return Region([], t)
    region: list[gs.Node] = []
    internal = [t]
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    while len(region) < _MAX_REGION:
        ids = {id(x) for x in internal}
        frontier = sorted(
            {id(n): n for x in internal for n in x.outputs if n not in region}.values(),
            key=lambda n: order.get(id(n), 0),
        )
        ok = [n for n in frontier if n.op in _POINTWISE and len(n.outputs) == 1]
        node = next((n for n in ok if _inputs_ok(n, ids, channels)), None)
        if node is None:
            return Region([], t)
        region.append(node)
        internal.append(node.outputs[0])
        open_ = [
            x
            for x in internal
            if is_graph_output(graph, x) or any(n not in region for n in x.outputs) or not x.outputs
        ]
        if len(open_) == 1 and open_[0] is not t:
            if len(region) > 1 or region[0].op in _AFFINE_OPS + ("Neg",):
                y = pointwise.evaluate(region, t, _probe(region, channels))
                if y is not None and pointwise.is_affine(y):
                    return Region([], t)  # linear: no activation (and nothing to remove)
            tail, core, affine = _trailing(graph, region, t, channels, residual)
            kind = classify(region + tail[:core], t, channels)
            region += tail
            return Region(region, region[-1].outputs[0], kind, affine)
    return Region([], t)
