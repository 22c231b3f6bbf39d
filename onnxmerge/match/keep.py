"""`--keep NODE_OR_TENSOR`: parts of the network a user protects (Torch-Pruning's "ignored
layers").

A kept node is left as it is: a kept Conv is neither merged nor pruned (its chain breaks on
both sides of it), a kept activation (or any node of its region) is not removed. A kept
tensor stays in the graph as a boundary: no merge crosses it (its values still change when
something upstream is compressed). A name that is neither a node nor a tensor of the graph is
an error; a node or tensor in no chain is already left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_graphsurgeon as gs

from onnxmerge.chain import Break
from onnxmerge.errors import OnnxMergeError
from onnxmerge.match.chains import Match, MatchedChain


def _positions(mc: MatchedChain, name: str) -> set[int]:
    """Chain positions that must be boundaries for `name` to be kept."""
    out: set[int] = set()
    if mc.input.name == name:
        out.add(0)
    for p, slot in enumerate(mc.slots, start=1):
        conv = slot.conv
        if name == conv.name or name in (t.name for t in conv.inputs[1:]):
            out |= {p - 1, p}
        region = [*slot.act, *([slot.add] if slot.add else [])]
        tensors = [conv.outputs[0], *(n.outputs[0] for n in region)]
        if name in (n.name for n in region) or name in (t.name for t in tensors):
            out.add(p)
    return out


def protect(graph: gs.Graph, match: Match, names: Iterable[str]) -> Match:
    """Add a break to every chain position a kept name needs (in place; returns `match`).

    Raises OnnxMergeError for a name that is no node or tensor of the graph.
    """
    names = list(dict.fromkeys(names))
    known = {n.name for n in graph.nodes} | set(graph.tensors())
    missing = [n for n in names if n not in known]
    if missing:
        raise OnnxMergeError(
            f"--keep {' '.join(missing)}: no node or tensor of that name in the model "
            "(names as `onnxmerge inspect` and Netron show them)"
        )
    for mc in match.chains:
        chain = mc.chain
        for name in names:
            for p in _positions(mc, name):
                if 0 < p < chain.length:  # the chain's ends are boundaries already
                    chain.breaks.append(Break(p, f"kept (--keep {name})"))
        by_position = {b.position: b for b in chain.breaks}
        chain.breaks[:] = sorted(by_position.values(), key=lambda b: b.position)
    return match
