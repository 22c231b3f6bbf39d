"""ONNX graph -> Chains, with no per-architecture code.

A *slot* is one eligible Conv (2-D, constant weights, static input shape), the residual Add
it owns (if its output goes straight into one), and the activation after that (if any).
The slot's output tensor is a chain position. Slots link into a chain when a position
tensor feeds exactly one next slot; any other use of a position tensor is either a residual
of the same chain (an Add that takes it as the skip, directly or through a shortcut conv)
or a *break* (the tensor must survive: the position stays a boundary).

Activations are recognised as small closed pointwise regions on the pre-activation tensor:
single ops (Relu, Clip, LeakyRelu, PRelu, HardSwish, Gelu, Elu, ...), gated forms x*f(x)
(Sigmoid -> SiLU, HardSigmoid -> HardSwish) and decomposed forms (x*Clip(x+3,0,6)/6,
Erf-based GELU). Chains whose spatial size is 1x1 throughout (squeeze-excitation branches,
heads) are reported but not merged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import Break, Chain, Residual
from onnxmerge.graph.ir import const, conv_spec, is_graph_output
from onnxmerge.passes.fold_pad import spatial_zero_pads

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
_MAX_REGION = 7


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
    v = const(t)
    return v is not None and (v.size == 1 or (channels is not None and v.size == channels))


def _classify(nodes: list[gs.Node]) -> str:
    ops = Counter(n.op for n in nodes)
    if len(nodes) == 1:
        n = nodes[0]
        if n.op == "Clip":
            lo, hi = _clip_bounds(n)
            return (
                "relu6"
                if (lo, hi) == (0.0, 6.0)
                else ("relu" if lo == 0 and hi is None else "clip")
            )
        return _SINGLE.get(n.op, "other")
    if ops["Erf"] or (ops["Tanh"] and ops["Pow"]):
        return "gelu"
    if ops["Sigmoid"] and ops["Mul"]:
        return "silu"
    if (ops["HardSigmoid"] or ops["Clip"]) and ops["Mul"]:
        return "hardswish"
    return "other"


def _clip_bounds(n: gs.Node) -> tuple[float | None, float | None]:
    if "min" in n.attrs or "max" in n.attrs:
        return (float(n.attrs.get("min", -np.inf)), float(n.attrs.get("max", np.inf)))
    vals = []
    for i in (1, 2):
        v = const(n.inputs[i]) if len(n.inputs) > i and n.inputs[i].name else None
        vals.append(None if v is None else float(np.asarray(v).reshape(-1)[0]))
    return vals[0], vals[1]


def _activation(graph: gs.Graph, t: gs.Tensor, channels: int) -> tuple[list[gs.Node], gs.Tensor]:
    """The smallest closed pointwise region reading `t` (all of t's uses inside it)."""
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
        node = next(
            (
                n
                for n in frontier
                if n.op in _POINTWISE
                and len(n.outputs) == 1
                and all(id(i) in ids or _small_const(i, channels) or not i.name for i in n.inputs)
            ),
            None,
        )
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
            kind = _classify(region)
            # x * Clip(x + 3, 0, 6) closes before its "/ 6": take the scale along.
            if kind == "hardswish" and len(out.outputs) == 1 and not is_graph_output(graph, out):
                nxt = out.outputs[0]
                if (
                    nxt.op in ("Div", "Mul")
                    and nxt.inputs[0] is out
                    and _small_const(nxt.inputs[1], None)
                ):
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
        # Both inputs are single-use conv outputs: the one reading a branch point is the
        # shortcut; with no way to tell, nobody owns the Add.
        mine = len(t.inputs[0].inputs[0].outputs) >= 2
        theirs = len(p.inputs[0].outputs) >= 2
        if mine or not theirs:
            return None
    return add, other


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
        slot.act_kind = _classify(slot.act) if slot.act else None
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
            if q > 1:
                breaks.append(Break(q - 1, "input of an Add with an outside tensor"))
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
