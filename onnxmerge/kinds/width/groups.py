"""Channel dependency groups of a normalized ONNX graph: which channels must go together.

Pruning channel k of a conv's output removes row k of its weight, and with it channel k of
every tensor that channel flows into unchanged: through activations, pools, residual Adds,
depthwise convs, SE gates, Concat and Split. `channel_groups(graph)` derives these sets from
any normalized graph (analysis.analyze), with no per-architecture code (DepGraph's model,
Fang et al. CVPR 2023, on explicit ONNX ops):

1. every channel-bearing tensor (static shape, rank >= 2, channels on axis 1; an (N, C*HW)
   Flatten output counts C channels of HW features each) gets cut points {0, C};
2. each node relates its tensors' channels by its op's rule (rules.py):
   - Conv, group 1, constant weight: *producer* of its output rows, *consumer* of its input
     columns, no tie; depthwise (group = C_in = C_out): ties input and output, its rows,
     bias and `group` follow; any other grouping (ResNeXt, RegNet, channel multipliers):
     producer and consumer whose sides fall into `group` blocks, each block keeping as
     many channels as the others (so its weight stays (C_out', C_in' / group, ...));
   - ConvTranspose, weight (C_in, C_out / group, ...): as a Conv with the weight's first two
     axes swapped, group 1 or depthwise (other groupings: fixed);
   - Gemm, or MatMul of a 2-D input, with a constant weight: consumer of the input
     features (a Flatten of HW > 1 maps channel c to features [c*HW, (c+1)*HW)), producer
     of the output features; MatMul of a higher-rank input over its last axis: tie;
   - activations, Dropout, Cast, pools, Resize/Upsample/Pad off the channel axis,
     BatchNormalization, InstanceNormalization, Transpose keeping axes 0 and 1, Reduce,
     Softmax, LayerNorm, ArgMax and Gather over other axes: tie input and output;
   - Add, Sub, Mul, Div, Max, Min, Sum, PRelu, Where, ...: tie every operand whose channel
     dimension equals the output's (an (N, C, 1, 1) SE gate too); a channel-1 operand
     broadcasts (no tie); a per-channel constant is a tied parameter;
   - Concat / Split / Slice (step 1) on axis 1: each part sits at its offset in the whole;
     on other axes: tie;
   - Flatten(1), Reshape, Squeeze, Unsqueeze keeping axes 0 and 1 (or flattening the rest
     into a 2-D (N, C*HW)): tie;
   - fixed: channel shuffle (a Reshape or Transpose moving the channel axis), Softmax,
     Reduce, LRN, LayerNorm or GroupNorm over channels, Gather or strided Slice on axis 1,
     MatMul of two computed operands, Shape, computed shapes or weights, and any other op;
3. ties and offsets carry cut points between tensors until nothing changes; every
   (tensor, segment between cuts) is a node, and union-find joins the nodes that ties and
   offsets identify. Each class is a group of one width; a group may sit several times in
   one tensor (SPPF's Concat of pools of one tensor).

A group is prunable (spec §2.3) when no member is a graph input or output, no touching node
fixes it, at least one constant-weight Conv/Gemm/MatMul produces it, the grouped convs on it
(if any) split all of it into nesting block counts with two channels or more per block
(`blocks`: the largest count), and its width is at least 2 * align (a group in blocks is
cut per conv group instead: staircase.width_options). `groups_report` gives
the JSON form `inspect --groups` prints.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxmerge.kinds.width.relations import Relations, collect


@dataclass(frozen=True)
class Member:
    """Channels [start, end) of `tensor` (in channels; `unit` features per channel, HW for a
    flattened (N, C*HW) tensor, else 1)."""

    tensor: str
    start: int
    end: int
    unit: int = 1


@dataclass
class Group:
    """One channel dependency group.

    `producers`: (node, offset of this group's channels in that node's output rows);
    `consumers`: (node, offset in its input columns, in features for a Gemm after a
    Flatten); `ties`: nodes with per-channel parameters that follow (depthwise convs,
    PRelu slopes, per-channel constants, BatchNormalization). A node appears once per
    segment it touches. `reason` says why a group is fixed ('' when prunable).
    """

    id: int
    width: int
    members: list[Member]
    producers: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    blocks: int = 1  # conv groups its channels fall into: each keeps an equal share


def _cut_points(rel: Relations) -> dict[str, list[int]]:
    """Cut points of every tensor, carried across links until nothing changes."""
    cuts = {t: {0, rel.channels(t)} for t in rel.features}
    changed = True
    while changed:
        changed = False
        for a, b, off in rel.links:
            ca, cb, width = cuts[a], cuts[b], rel.channels(a)
            to_b = {off + x for x in ca} - cb
            to_a = {y - off for y in cb if off <= y <= off + width} - ca
            if to_a or to_b:
                ca |= to_a
                cb |= to_b
                changed = True
    return {t: sorted(c) for t, c in cuts.items()}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(self, x: tuple[str, int]) -> tuple[str, int]:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def channel_groups(graph: gs.Graph, align: int = 1) -> list[Group]:
    """The channel dependency groups of a normalized graph (not modified), in graph order.

    `align`: the backend's channel alignment; a group narrower than 2 * align is fixed
    (unless grouped convs split it: it is cut per conv group).
    """
    rel = collect(graph)
    cuts = _cut_points(rel)
    uf = _UnionFind()

    def segment(t: str, start: int) -> tuple[str, int]:
        return t, bisect_left(cuts[t], start)

    for a, b, off in rel.links:
        ca = cuts[a]
        for s in ca[:-1]:
            uf.union(segment(a, s), segment(b, off + s))
    groups: list[Group] = []
    index: dict[tuple[str, int], Group] = {}
    for t in rel.features:  # graph order: the first tensor of a group names its id
        c = cuts[t]
        for i, (s, e) in enumerate(zip(c[:-1], c[1:], strict=True)):
            root = uf.find((t, i))
            if root not in index:
                index[root] = Group(len(groups), e - s, [])
                groups.append(index[root])
            index[root].members.append(Member(t, s, e, rel.unit(t)))
    of = {(t, i): index[uf.find((t, i))] for t in cuts for i in range(len(cuts[t]) - 1)}
    for role, node, t in rel.roles:
        c = cuts[t]
        for i, s in enumerate(c[:-1]):
            g = of[(t, i)]
            if role == "producer":
                g.producers.append((node, s))
            elif role == "consumer":
                g.consumers.append((node, s * rel.unit(t)))
            elif node not in g.ties:
                g.ties.append(node)
    for g in groups:
        reasons: list[str] = []
        for m in g.members:
            reasons += [r for r in rel.fixed.get(m.tensor, ()) if r not in reasons]
        if not reasons and not g.producers:
            reasons.append("no constant-weight Conv, Gemm or MatMul produces it")
        if not reasons:
            g.blocks, why = _blocks(g, rel)
            reasons += [why] if why else []
        if not reasons and g.blocks == 1 and g.width < 2 * align:  # blocks: per conv group
            reasons.append(f"width {g.width} < 2 x align {align}")
        g.prunable, g.reason = not reasons, "; ".join(reasons)
    return groups


def _blocks(g: Group, rel: Relations) -> tuple[int, str]:
    """(conv groups the group's channels fall into, '' or why that fixes it): the grouped
    convs on its tensors must split all of it, in counts that nest (4 and 8, not 4 and 6),
    leaving at least two channels per block."""
    counts = set()
    for m in g.members:
        split = rel.blocks.get(m.tensor, ())
        if split and (m.start, m.end) != (0, rel.channels(m.tensor)):
            return 1, "a grouped convolution reads or writes only part of it"
        counts.update(split)
    blocks = max(counts, default=1)
    if any(blocks % b for b in counts):
        return 1, f"grouped convolutions split it into {sorted(counts)} groups"
    if blocks > 1 and g.width // blocks < 2:
        return blocks, f"grouped convolution: one channel per conv group ({blocks} groups)"
    return blocks, ""


def groups_report(groups: list[Group], align: int = 1, align_source: str = "given") -> dict:
    """The groups as JSON-ready data (`inspect --groups`): counts at channel alignment
    `align` (and where it came from), then each group's id, width, members [tensor, start,
    end, unit], producers and consumers [node, offset], ties, prunable and reason."""
    return {
        "groups": len(groups),
        "prunable": sum(g.prunable for g in groups),
        "channels": sum(g.width for g in groups if g.prunable),
        "align": align,
        "align_source": align_source,
        "list": [
            {
                "id": g.id,
                "width": g.width,
                "members": [[m.tensor, m.start, m.end, m.unit] for m in g.members],
                "producers": [list(p) for p in g.producers],
                "consumers": [list(c) for c in g.consumers],
                "ties": list(g.ties),
                "prunable": g.prunable,
                "reason": g.reason,
                "blocks": g.blocks,
            }
            for g in groups
        ],
    }
