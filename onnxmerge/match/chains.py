"""ONNX graph -> Chains, with no per-architecture code.

A *slot* is one eligible Conv (2-D, constant weights, static input shape), the residual Add
it owns (if its output goes straight into one), and the activation after that (if any).
The slot's output tensor is a chain position. Slots link into a chain when a position
tensor feeds exactly one next slot; any other use of a position tensor is either a residual
of the same chain (an Add that takes it as the skip, directly or through a shortcut conv)
or a *break* (the tensor must survive: the position stays a boundary).

Activations are the pointwise regions of match.regions (with any trailing affine of their
own). Chains whose spatial size is 1x1 throughout (squeeze-excitation branches, heads) are
reported but not merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import Break, Chain, Residual
from onnxmerge.graph.conv import conv_spec, why_not_spec
from onnxmerge.graph.tensors import const, is_graph_output
from onnxmerge.match.regions import Affine, activation_region
from onnxmerge.passes.fold_pad import spatial_zero_pads


@dataclass
class Slot:
    """Graph handles of one chain position."""

    conv: gs.Node
    add: gs.Node | None = None
    skip: gs.Tensor | None = None
    act: list[gs.Node] = field(default_factory=list)
    act_kind: str | None = None
    output: gs.Tensor | None = None
    # What replaces the activation region when it is removed: a per-channel affine (the
    # region's own trailing Mul/Add), or None for the identity (match.regions).
    act_affine: Affine | None = None

    @property
    def pre_act(self) -> gs.Tensor:
        """The tensor the activation reads: the Add output, or the conv output."""
        return (self.add or self.conv).outputs[0]


@dataclass
class MatchedChain:
    """A Chain and the graph handles of its slots."""

    chain: Chain
    input: gs.Tensor
    slots: list[Slot]  # slots[p - 1] is position p
    shortcuts: dict[int, gs.Node] = field(default_factory=dict)  # residual end -> conv node
    mergeable: bool = True
    note: str = ""


@dataclass
class Match:
    """Every chain of a graph, and the convs in none (with why)."""

    chains: list[MatchedChain]
    unmatched: list[tuple[str, str]]  # (conv name, why it is in no chain)


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
        region = activation_region(
            graph, slot.pre_act, specs[id(n)].out_channels, residual=slot.add is not None
        )
        slot.act, slot.output, slot.act_kind = region.nodes, region.output, region.kind
        slot.act_affine = region.affine
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
    return why_not_spec(node) or "shortcut of an Add whose other side is not in a chain"


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
        affine_at=frozenset(p for p, s in enumerate(run, start=1) if s.act_affine is not None),
    )
    m = MatchedChain(chain=chain, input=first, slots=run, shortcuts=shortcuts)
    if all(c.in_hw == (1, 1) and c.out_hw == (1, 1) for c in chain.convs):
        m.mergeable, m.note = False, "1x1 spatial (squeeze-excitation or head): not merged"
    return m


def _is_residual_add(node: gs.Node, run: list[Slot]) -> bool:
    return any(s.add is node for s in run)
