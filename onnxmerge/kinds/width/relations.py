"""The channel relations of a graph: what the per-op rules (rules.py) say, collected.

`collect(graph)` walks a normalized graph in topological order and records, for every
channel-bearing tensor (a Variable of static shape and rank >= 2; channels on axis 1):
- links `(a, b, off)`: channel i of `a` is channel `off + i` of `b` (a tie is offset 0
  between equal widths; Concat inputs, Split and Slice outputs sit at offsets);
- units: features per channel (1, or H*W for the flattened (N, C*HW) form of an
  (N, C, H, W) tensor, whose channel c spans features [c*HW, (c+1)*HW));
- roles: the nodes that produce (constant-weight rows), consume (constant-weight columns)
  or carry per-channel parameters for a tensor's channels;
- fixed tensors, each with the reasons why its channels may not change (graph inputs and
  outputs are fixed: they are the model's interface);
- blocks: the `group` counts of the grouped convs that read or write a tensor (each conv
  group must keep as many of its channels as every other).
groups.py turns these into dependency groups.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxmerge.graph.tensors import static_shape
from onnxmerge.kinds.width.rules import RULES, bearing, name_of


def _unknown(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and bool(t.name) and static_shape(t) is None


@dataclass
class Relations:
    """What the rules found (see the module docstring); tensors are named, in graph order."""

    features: dict[str, int] = field(default_factory=dict)  # shape[1] of each tensor
    units: dict[str, int] = field(default_factory=dict)
    links: list[tuple[str, str, int]] = field(default_factory=list)
    roles: list[tuple[str, str, str]] = field(default_factory=list)  # (role, node, tensor)
    fixed: dict[str, list[str]] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)  # conv groups splitting a tensor

    def unit(self, name: str) -> int:
        """Features per channel of a tensor (1 unless flattened)."""
        return self.units.get(name, 1)

    def channels(self, name: str) -> int:
        """Channel count of a tensor, in channels (features / unit)."""
        return self.features[name] // self.unit(name)


class Collector:
    """Records what the rules say about one graph's tensors into `rel` (a Relations)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.rel = Relations()
        self.opset = int(getattr(graph, "opset", None) or 17)

    def register(self, t: gs.Tensor) -> None:
        """Note a channel-bearing tensor's width (once, in graph order)."""
        if bearing(t) and t.name not in self.rel.features:
            self.rel.features[t.name] = int(t.shape[1])

    def fix(self, t: gs.Tensor, why: str) -> None:
        """Fix a tensor's channels, for the reason `why`."""
        if bearing(t):
            self.register(t)
            reasons = self.rel.fixed.setdefault(t.name, [])
            if why not in reasons:
                reasons.append(why)

    def fix_node(self, node: gs.Node, why: str) -> None:
        """Fix every channel-bearing tensor `node` reads or writes."""
        for t in [*node.inputs, *node.outputs]:
            self.fix(t, f"{node.op} {name_of(node)!r}: {why}")

    def role(self, role: str, node: gs.Node, t: gs.Tensor) -> None:
        """`node` is a producer, consumer or (parameter) tie of `t`'s channels."""
        self.rel.roles.append((role, name_of(node), t.name))

    def split(self, t: gs.Tensor, blocks: int) -> None:
        """`t`'s channels fall into `blocks` equal conv groups (a grouped conv's side)."""
        if bearing(t):
            self.register(t)
            self.rel.blocks.setdefault(t.name, []).append(blocks)

    def tie(self, node: gs.Node, src: gs.Tensor, dst: gs.Tensor) -> None:
        """Channel i of src is channel i of dst (dst takes src's unit if it has none yet)."""
        if not (bearing(src) and bearing(dst)):
            return
        rel = self.rel
        rel.units.setdefault(dst.name, rel.unit(src.name))
        if src.shape[1] != dst.shape[1] or rel.unit(src.name) != rel.unit(dst.name):
            for t in (src, dst):
                self.fix(t, f"{node.op} {name_of(node)!r}: channels do not line up")
            return
        rel.links.append((src.name, dst.name, 0))

    def offset(self, node: gs.Node, part: gs.Tensor, whole: gs.Tensor, off: int) -> None:
        """Channel i of `part` is channel off + i of `whole` (Concat, Split, Slice)."""
        if self.rel.unit(part.name) != 1 or self.rel.unit(whole.name) != 1:
            self.fix_node(node, "offsets on flattened channels")
            return
        self.rel.links.append((part.name, whole.name, off))

    def node(self, node: gs.Node) -> None:
        """Apply `node`'s rule (or fix its tensors), then register them."""
        if any(_unknown(t) for t in [*node.inputs, *node.outputs]):
            self.fix_node(node, "a tensor of unknown shape")
        elif any(bearing(t) for t in [*node.inputs, *node.outputs]):
            rule = RULES.get(node.op)
            why = rule(self, node) if rule else "no channel rule for this op"
            if why:
                self.fix_node(node, why)
        for t in [*node.inputs, *node.outputs]:
            self.register(t)


def _topological(graph: gs.Graph) -> list[gs.Node]:
    """The graph's nodes, each after the producers of its inputs (the caller's order kept)."""
    made: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.outputs:
            made[id(t)] = i
    deps = [
        {made[id(t)] for t in n.inputs if id(t) in made} - {i} for i, n in enumerate(graph.nodes)
    ]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    ready = [i for i, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            deps[u].discard(i)
            if not deps[u]:
                heapq.heappush(ready, u)
    seen = set(order)
    order += [i for i in range(len(graph.nodes)) if i not in seen]  # cycles: as written
    return [graph.nodes[i] for i in order]


def collect(graph: gs.Graph) -> Relations:
    """The channel relations of `graph` (not modified): links, units, roles, fixed tensors.

    Graph inputs and outputs are fixed (their channels are the model's interface).
    """
    c = Collector(graph)
    for t in graph.inputs:
        c.register(t)
    for node in _topological(graph):
        c.node(node)
    for t in graph.inputs:
        c.fix(t, f"graph input {t.name!r}")
    for t in graph.outputs:
        c.fix(t, f"graph output {t.name!r}")
    return c.rel
