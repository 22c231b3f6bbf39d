"""Apply segment choices to a normalized graph: the merged form or the fine-tune form.

A choice is (start, end, kept) for one chain. Segments that are a single unchanged conv with
nothing folded are left alone. `fuse_choices` picks, for `onnxmerge fuse`, the fewest valid
segments covering each maximal activation-free run; by default only merges that are exact
everywhere (no padding after the first conv: the fine-tune form), or all of them with
`direct=True` (exact in the interior only).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxmerge.compose import border_width
from onnxmerge.match import Match, MatchedChain
from onnxmerge.passes.finetune_form import finetune_group
from onnxmerge.passes.merge_group import merge_group, segment_parts

Choice = tuple[int, int, tuple[int, ...]]


def is_noop(mc: MatchedChain, choice: Choice) -> bool:
    s, e, kept = choice
    return e - s == 1 and len(kept) == 1 and not mc.chain.fused_residuals(s, e)


def apply_choices(
    graph: gs.Graph,
    match: Match,
    choices: dict[int, list[Choice]],
    form: str = "merged",
    merged: dict[tuple[int, int, int], object] | None = None,
) -> int:
    """Rewrite every chosen segment; return how many were rewritten. Cleans up the graph."""
    count = 0
    for ci, segs in choices.items():
        mc = match.chains[ci]
        for choice in segs:
            if is_noop(mc, choice):
                continue
            s, e, kept = choice
            if form == "merged":
                merge_group(graph, mc, s, e, kept, (merged or {}).get((ci, s, e)))
            else:
                finetune_group(graph, mc, s, e, kept)
            count += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export with the input model's opsets, IR version and metadata.

    Intermediate shapes are dropped: rewrites change them (the fine-tune form's maps are larger
    than nominal), and stale value_info would contradict ONNX Runtime's own inference.
    """
    keep = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in keep:
            t.shape = None
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.producer_name = "onnxmerge"
    for prop in like.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def _exact(mc: MatchedChain, s: int, e: int) -> bool:
    convs, residuals = segment_parts(mc, s, e, tuple(range(s + 1, e + 1)))
    return not any(border_width(convs, residuals))


def _fusable(mc: MatchedChain, s: int, e: int, direct: bool) -> bool:
    """(s, e] is activation-free inside, valid, and (unless direct) exact everywhere."""
    chain = mc.chain
    breaks = {b.position for b in chain.breaks}
    linear = all(chain.activations[p] is None and p not in breaks for p in range(s + 1, e))
    return linear and chain.is_valid(s, e) and (direct or _exact(mc, s, e))


def fuse_choices(match: Match, direct: bool = False) -> dict[int, list[Choice]]:
    """Fewest segments covering each activation-free run (exact-only unless `direct`)."""
    out: dict[int, list[Choice]] = {}
    for ci, mc in enumerate(match.chains):
        n = mc.chain.length
        best = [0] + [n + 1] * n  # fewest segments covering (0, e]
        back = [0] * (n + 1)
        for e in range(1, n + 1):
            for s in range(e - 1, -1, -1):
                if s < e - 1 and mc.chain.activations[s + 1] is not None:
                    break  # a kept activation inside: no longer segments from here
                if best[s] + 1 < best[e] and _fusable(mc, s, e, direct):
                    best[e], back[e] = best[s] + 1, s
        segs, e = [], n
        while e > 0:
            s = back[e]
            segs.append((s, e, tuple(range(s + 1, e + 1))))
            e = s
        out[ci] = [c for c in reversed(segs) if not is_noop(mc, c)]
    return out
