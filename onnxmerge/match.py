"""ONNX graph -> Chains, with no per-architecture code.

A *slot* is one eligible Conv (2-D, constant weights, static input shape), the residual Add
it owns (if its output goes straight into one), and the activation after that (if any).
The slot's output tensor is a chain position. Slots link into a chain when a position
tensor feeds exactly one next slot; any other use of a position tensor is either a residual
of the same chain (an Add that takes it as the skip, directly or through a shortcut conv)
or a *break* (the tensor must survive: the position stays a boundary).

Activations are recognised as small closed pointwise regions on the pre-activation tensor
(nodes reading only it, each other and scalar or per-channel constants): single ops (Relu,
Clip, LeakyRelu, PRelu, HardSwish, Gelu, Elu, ...) by name, anything longer by what it
computes (onnxmerge.pointwise evaluates it on probe values): gated forms x*f(x) (SiLU,
HardSwish), decomposed forms (x*Clip(x+3,0,6)/6, Erf and tanh GELU, with a trailing scale
that normalises the slope taken along). An affine region (Add(x, x), a lone scale) is no
activation. Chains whose spatial size is 1x1 throughout (squeeze-excitation branches, heads)
are reported but not merged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge import pointwise
from onnxmerge.chain import Break, Chain, Residual
from onnxmerge.graph.ir import const, conv_spec, is_graph_output
from onnxmerge.passes.fold_pad import spatial_zero_pads
from onnxmerge.pointwise import clip_bounds

_SINGLE = {
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "PRelu": "prelu",
    "HardSwish": "hardswish",
    "Gelu": "gelu",
    "Elu": "other",
    "Selu": "other",
    "Celu": "other",
    "Softplus": "other",
    "ThresholdedRelu": "other",
    "Mish": "other",
    "Tanh": "other",
    "Sigmoid": "other",
    "HardSigmoid": "other",
}
_POINTWISE = set(_SINGLE) | {
    "Clip",
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Erf",
    "Max",
    "Min",
    "Neg",
    "Pow",
    "Sqrt",
    "Exp",
    "Abs",
    "Log",
}
_MAX_REGION = 16


@dataclass
class Slot:
    """Graph handles of one chain position."""

    conv: gs.Node
    add: gs.Node | None = None
    skip: gs.Tensor | None = None
    act: list[gs.Node] = field(default_factory=list)
    act_kind: str | None = None
    output: gs.Tensor | None = None

    @property
    def pre_act(self) -> gs.Tensor:
        """The tensor the activation reads: the Add output, or the conv output."""
        return (self.add or self.conv).outputs[0]


@dataclass
class MatchedChain:
    chain: Chain
    input: gs.Tensor
    slots: list[Slot]  # slots[p - 1] is position p
    shortcuts: dict[int, gs.Node] = field(default_factory=dict)  # residual end -> conv node
    mergeable: bool = True
    note: str = ""


@dataclass
class Match:
    chains: list[MatchedChain]
    unmatched: list[tuple[str, str]]  # (conv name, why it is in no chain)


def _small_const(t: gs.Tensor, channels: int | None) -> bool:
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


def _classify(nodes: list[gs.Node], source: gs.Tensor | None = None, channels: int = 1) -> str:
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
        if n.op in _SINGLE:
            return _SINGLE[n.op]
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


def _region_inputs_ok(n: gs.Node, ids: set[int], channels: int) -> bool:
    return all(id(i) in ids or _small_const(i, channels) or not i.name for i in n.inputs)


def _trailing_scale(graph: gs.Graph, region: list[gs.Node], t: gs.Tensor, channels: int):
    """The Mul / Div by a constant after the region that brings its far slope to 1, if any.

    Exporters write 0.5 * x * (1 + erf(x / sqrt 2)) as (x * (1 + erf)) * 0.5 and
    x * Clip(x + 3, 0, 6) / 6 with the scale last: the smallest closed region stops before it.
    """
    out = region[-1].outputs[0]
    if len(out.outputs) != 1 or is_graph_output(graph, out):
        return None
    nxt = out.outputs[0]
    if nxt.op not in ("Mul", "Div") or len(nxt.inputs) != 2 or len(nxt.outputs) != 1:
        return None
    if nxt.inputs[0] is not out and (nxt.op == "Div" or nxt.inputs[1] is not out):
        return None
    if not _small_const(nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0], channels):
        return None
    x = _probe(region + [nxt], channels)
    before = pointwise.evaluate(region, t, x)
    after = pointwise.evaluate(region + [nxt], t, x)
    if before is None or after is None:
        return None
    s0, s1 = pointwise.far_slope(before), pointwise.far_slope(after)
    if s0 is None or s1 is None or np.allclose(s0, 1.0, rtol=1e-4):
        return None
    return nxt if np.allclose(s1, 1.0, rtol=1e-4) else None


def _activation(graph: gs.Graph, t: gs.Tensor, channels: int) -> tuple[list[gs.Node], gs.Tensor]:
    """The smallest closed pointwise region reading `t` (all of t's uses inside it).

    Its nodes read only `t`, tensors of the region and scalar / per-channel constants, so it
    is a function applied to each element of `t` (per channel). A region that is affine
    (Add(x, x), a lone scale) is no activation; a trailing constant scale that normalises the
    region's slope to 1 (torch's GELU "* 0.5", hardswish's "/ 6") is taken along.
    """
    if is_graph_output(graph, t) or not t.outputs:
        return [], t
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
        node = next((n for n in ok if _region_inputs_ok(n, ids, channels)), None)
        if node is None:
            return [], t
        region.append(node)
        internal.append(node.outputs[0])
        open_ = [
            x
            for x in internal
            if is_graph_output(graph, x) or any(n not in region for n in x.outputs) or not x.outputs
        ]
        if len(open_) == 1 and open_[0] is not t:
            out = open_[0]
            if len(region) > 1 or region[0].op in ("Mul", "Div", "Add", "Sub", "Neg"):
                y = pointwise.evaluate(region, t, _probe(region, channels))
                if y is not None and pointwise.is_affine(y):
                    return [], t  # linear: no activation (and nothing to remove)
            if (nxt := _trailing_scale(graph, region, t, channels)) is not None:
                region.append(nxt)
                out = nxt.outputs[0]
            return region, out
    return [], t


def _owned_add(t: gs.Tensor, graph: gs.Graph) -> tuple[gs.Node, gs.Tensor] | None:
    """The Add that the conv producing `t` owns, and its skip input."""
    if len(t.outputs) != 1 or is_graph_output(graph, t):
        return None
    add = t.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    other = add.inputs[1] if add.inputs[0] is t else add.inputs[0]
    if const(other) is not None or getattr(other, "shape", None) != getattr(t, "shape", None):
        return None
    p = other.inputs[0] if other.inputs else None
    if p is not None and p.op == "Conv" and len(other.outputs) == 1 and conv_spec(p):
        if _shortcut_side(t.inputs[0], p) is not p:
            return None
    return add, other


def _shortcut_side(mine: gs.Node, theirs: gs.Node) -> gs.Node | None:
    """Of two convs whose single-use outputs meet in one Add, the shortcut (None: undecided).

    The shortcut reads a branch point (a tensor the main path also reads), possibly through
    the Slice / zero Pad a fine-tune graph puts on a skip; the main conv reads the previous
    position, used only by it. When both read the same branch point (a fine-tune graph whose
    block end was pruned), either reading is exact: the side behind an aligner, else the
    smaller kernel, else the Add's second input, is the shortcut. Two different branch points
    (two chains joining) have no owner.
    """
    (src_m, crop_m, pad_m), (src_t, crop_t, pad_t) = (
        _unwrap_skip(mine.inputs[0]),
        _unwrap_skip(theirs.inputs[0]),
    )
    branch_m, branch_t = len(src_m.outputs) >= 2, len(src_t.outputs) >= 2
    if branch_t and not branch_m:
        return theirs
    if branch_m and not branch_t:
        return mine
    if not branch_m or src_m is not src_t:
        return None
    aligned_m, aligned_t = any(crop_m + pad_m), any(crop_t + pad_t)
    if aligned_m != aligned_t:
        return mine if aligned_m else theirs
    area_m = np.prod(const(mine.inputs[1]).shape[2:])
    area_t = np.prod(const(theirs.inputs[1]).shape[2:])
    if area_m != area_t:
        return mine if area_m < area_t else theirs
    add = mine.outputs[0].outputs[0]
    return mine if add.inputs[1] is mine.outputs[0] else theirs


def match(graph: gs.Graph) -> Match:
    """Find every chain in a normalized graph (shapes inferred, BN folded)."""
    specs = {id(n): s for n in graph.nodes if n.op == "Conv" and (s := conv_spec(n))}
    owned: dict[int, tuple[gs.Node, gs.Tensor]] = {}
    for n in graph.nodes:
        if id(n) in specs and (o := _owned_add(n.outputs[0], graph)):
            owned[id(n)] = o
    feeds_owned_add = {  # shortcut convs: their only use is an Add another conv owns
        id(o[1].inputs[0])
        for o in owned.values()
        if o[1].inputs and id(o[1].inputs[0]) in specs and len(o[1].outputs) == 1
    }
    slots: dict[int, Slot] = {}
    for n in graph.nodes:
        if id(n) not in specs or id(n) in feeds_owned_add:
            continue
        slot = Slot(conv=n)
        if id(n) in owned:
            slot.add, slot.skip = owned[id(n)]
        slot.act, slot.output = _activation(graph, slot.pre_act, specs[id(n)].out_channels)
        slot.act_kind = (
            _classify(slot.act, slot.pre_act, specs[id(n)].out_channels) if slot.act else None
        )
        slots[id(n)] = slot

    by_input: dict[int, list[Slot]] = {}
    for s in slots.values():
        by_input.setdefault(id(s.conv.inputs[0]), []).append(s)
    by_output = {id(s.output): s for s in slots.values()}

    def successor(s: Slot) -> Slot | None:
        nxt = by_input.get(id(s.output), [])
        return nxt[0] if len(nxt) == 1 else None

    def predecessor(s: Slot) -> Slot | None:
        prev = by_output.get(id(s.conv.inputs[0]))
        return prev if prev is not None and successor(prev) is s else None

    chains = []
    for s in slots.values():
        if predecessor(s) is None:
            run = [s]
            while (n := successor(run[-1])) is not None:
                run.append(n)
            chains.append(_build_chain(graph, run, specs, len(chains)))
    used = {id(m.slots[i].conv) for m in chains for i in range(len(m.slots))}
    used |= {id(c) for m in chains for c in m.shortcuts.values()}
    unmatched = [
        (n.name, _why_unmatched(n)) for n in graph.nodes if n.op == "Conv" and id(n) not in used
    ]
    return Match(chains=chains, unmatched=unmatched)


def _spatial_slice(node: gs.Node) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) crop of a constant step-1 Slice over H and W, else None."""
    shape = getattr(node.inputs[0], "shape", None)
    vals = [const(t) if t.name else None for t in node.inputs[1:5]] + [None] * 4
    starts, ends, axes, steps = vals[:4]
    if starts is None or ends is None or shape is None or len(shape) != 4:
        return None
    axes = [a % 4 for a in (axes if axes is not None else range(len(starts)))]
    if steps is not None and any(int(x) != 1 for x in steps):
        return None
    crop = [0, 0, 0, 0]
    for a, st, en in zip(axes, starts, ends, strict=True):
        size = shape[a]
        st, en = int(st), int(en)
        st, en = (st + size if st < 0 else st), min(en + size if en < 0 else en, size)
        if a < 2:
            if (st, en) != (0, size):
                return None
            continue
        crop[a - 2], crop[a] = st, size - en
    return tuple(crop) if min(crop) >= 0 else None


def _unwrap_skip(t: gs.Tensor) -> tuple[gs.Tensor, tuple, tuple]:
    """See through the Slice / zero Pad a fine-tune graph puts on a skip: (source, crop, pad)."""
    crop = pad = (0, 0, 0, 0)
    p = t.inputs[0] if t.inputs else None
    if p is not None and p.op == "Slice" and len(t.outputs) == 1:
        c = _spatial_slice(p)
        if c is not None:
            crop, t = c, p.inputs[0]
            p = t.inputs[0] if t.inputs else None
    if p is not None and p.op == "Pad" and len(t.outputs) == 1 and not any(crop):
        q = spatial_zero_pads(p)
        if q is not None:
            pad, t = q, p.inputs[0]
    return t, crop, pad


def _why_unmatched(node: gs.Node) -> str:
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "weights are not constant"
    if w.ndim != 4:
        return f"{w.ndim - 2}-D convolution"
    if conv_spec(node) is None:
        return "input shape unknown"
    return "shortcut of an Add whose other side is not in a chain"


def _aligners(t: gs.Tensor, source: gs.Tensor) -> list[gs.Node]:
    """The Slice / Pad nodes between a skip tensor and its source position."""
    nodes = []
    while t is not source and t.inputs:
        nodes.append(t.inputs[0])
        t = t.inputs[0].inputs[0]
    return nodes


def _describe(node: gs.Node | None, tensor: gs.Tensor) -> str:
    if node is None:
        return f"graph input '{tensor.name}'"
    return f"{node.op} '{node.name}'"


def _build_chain(graph: gs.Graph, run: list[Slot], specs: dict, index: int) -> MatchedChain:
    first = run[0].conv.inputs[0]
    position = {id(first): 0} | {id(s.output): p for p, s in enumerate(run, start=1)}
    residuals, shortcuts, breaks, allowed = [], {}, [], set()
    for q, s in enumerate(run, start=1):
        if s.add is None:
            continue
        skip, crop, pad = _unwrap_skip(s.skip)
        p = position.get(id(skip))
        sc = skip.inputs[0] if skip.inputs else None
        if p is not None and p < q:
            residuals.append(Residual(p, q, crop=crop, pad=pad))
            allowed |= {id(s.add)} | {id(n) for n in _aligners(s.skip, skip)}
        elif sc is not None and id(sc) in specs and not any(pad) and not any(crop):
            src, crop, pad = _unwrap_skip(sc.inputs[0])
            if position.get(id(src), q) >= q:
                breaks.append(Break(q, f"Add of a tensor from outside the chain ('{s.skip.name}')"))
                continue
            residuals.append(Residual(position[id(src)], q, shortcut=specs[id(sc)], crop=crop))
            shortcuts[q] = sc
            allowed |= {id(sc)} | {id(n) for n in _aligners(sc.inputs[0], src)}
        else:
            breaks.append(Break(q, f"Add of a tensor from outside the chain ('{s.skip.name}')"))
    for p in range(1, len(run)):
        t, nxt = run[p - 1].output, run[p].conv
        extra = [n for n in t.outputs if n is not nxt and id(n) not in allowed]
        if extra or is_graph_output(graph, t):
            what = ", ".join(f"{n.op} '{n.name}'" for n in extra) or "a graph output"
            breaks.append(Break(p, f"also used by {what}"))
    last = run[-1].output
    users = [n for n in last.outputs if not _is_residual_add(n, run)]
    out_to = ", ".join(f"{n.op} '{n.name}'" for n in users) or "graph output"
    chain = Chain(
        name=f"chain{index}",
        convs=[specs[id(s.conv)] for s in run],
        activations=[None] + [s.act_kind for s in run],
        residuals=residuals,
        breaks=sorted({b.position: b for b in breaks}.values(), key=lambda b: b.position),
        input_from=_describe(first.inputs[0] if first.inputs else None, first),
        output_to=out_to,
    )
    m = MatchedChain(chain=chain, input=first, slots=run, shortcuts=shortcuts)
    if all(c.in_hw == (1, 1) and c.out_hw == (1, 1) for c in chain.convs):
        m.mergeable, m.note = False, "1x1 spatial (squeeze-excitation or head): not merged"
    return m


def _is_residual_add(node: gs.Node, run: list[Slot]) -> bool:
    return any(s.add is node for s in run)
