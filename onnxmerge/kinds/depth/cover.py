"""Which segments `onnxmerge fuse` merges: every activation-free run, or exactly a plan's.

`fuse_segments` picks, per chain, the fewest valid segments covering each maximal
activation-free run: by default only merges that are exact everywhere (no padding after the
first conv: the fine-tune form), or all of them with `direct=True` (exact in the interior
only). `plan_segments` picks exactly a plan's groups in its fine-tune graph instead
(`onnxmerge fuse --plan`). Segments that rewrite nothing are left out of both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from onnxmerge.chain import Segment
from onnxmerge.compose import border_width
from onnxmerge.errors import OnnxMergeError
from onnxmerge.kinds.depth.candidates import signature
from onnxmerge.kinds.depth.segments import rewrites_nothing, segment_parts
from onnxmerge.match import Match, MatchedChain
from onnxmerge.plan import PlanGroup


def _exact(mc: MatchedChain, s: int, e: int) -> bool:
    convs, residuals = segment_parts(mc, Segment(-1, s, e, tuple(range(s + 1, e + 1))))
    return not any(border_width(convs, residuals))


def _fusable(mc: MatchedChain, s: int, e: int, direct: bool) -> bool:
    """(s, e] is activation-free inside, valid, and (unless direct) exact everywhere."""
    chain = mc.chain
    breaks = {b.position for b in chain.breaks}
    linear = all(chain.activations[p] is None and p not in breaks for p in range(s + 1, e))
    return linear and chain.is_valid(s, e) and (direct or _exact(mc, s, e))


def fusable_segments(match: Match, direct: bool = False) -> list[Segment]:
    """Every segment fuse may merge: activation-free inside, valid, exact unless `direct`
    (single convs included)."""
    out = []
    for ci, mc in enumerate(match.chains):
        for e in range(1, mc.chain.length + 1):
            for s in range(e - 1, -1, -1):
                if s < e - 1 and mc.chain.activations[s + 1] is not None:
                    break  # a kept activation inside: no longer segments from here
                if _fusable(mc, s, e, direct):
                    out.append(Segment(ci, s, e, tuple(range(s + 1, e + 1))))
    return out


def fuse_segments(
    match: Match, direct: bool = False, cost: Mapping[Segment, float] | None = None
) -> list[Segment]:
    """Per chain, the tiling of each activation-free run into fusable segments that `fuse`
    merges (those that rewrite nothing left out).

    With `cost` (ms per segment, e.g. its merged conv's table latency; single convs too),
    the tiling of least total cost, ties to fewer segments: only merges that pay. Without, the
    fewest segments (every run merged as far as exactness allows).
    """
    by_end: dict[tuple[int, int], list[Segment]] = {}
    for seg in fusable_segments(match, direct):
        by_end.setdefault((seg.chain, seg.end), []).append(seg)
    out: list[Segment] = []
    for ci, mc in enumerate(match.chains):
        n = mc.chain.length
        best: list[tuple[float, int]] = [(0.0, 0)] + [(math.inf, n + 1)] * n
        back: list[Segment | None] = [None] * (n + 1)
        for e in range(1, n + 1):
            for seg in by_end.get((ci, e), []):
                c, k = best[seg.start]
                new = (c + (cost[seg] if cost is not None else 0.0), k + 1)
                if new < best[e]:
                    best[e], back[e] = new, seg
        segs, e = [], n
        while e > 0:
            segs.append(back[e])
            e = back[e].start
        out += [c for c in reversed(segs) if not rewrites_nothing(mc, c)]
    return out


# finetune_form's extra convs: Add(x, x) as a conv, an affine left after a pruned conv.
_EXTRA = re.compile(r"(.*)_(?:doubled|affine)_(\d+)(?:_\d+)?")
_HINT = " (is the graph the --finetune-graph written with this plan?)"


class _Misfit(OnnxMergeError):
    def __init__(self, what: str) -> None:
        super().__init__(f"the plan does not fit the model: {what}{_HINT}")


def plan_segments(match: Match, groups: Sequence[PlanGroup], direct: bool = False) -> list[Segment]:
    """The segments of a fine-tune graph that are exactly a plan's groups (noops left out).

    The fine-tune graph keeps each group's kept convs (pruned ones bypassed), so group g of a
    chain, in start order, is the next len(g.kept) convs of that chain there, plus the 1x1
    Convs the fine-tune form adds inside the group: `CHAIN_doubled_END` for an identity
    residual whose convs were all pruned, `CHAIN_affine_P` for the affine a removed
    activation leaves after a pruned conv (their END / P lies in the group). A chain is found
    by its kept convs' names when the plan has them (chain numbers can change: the fine-tune
    graph's node order differs in branching networks), else by its name. Each segment must
    be a valid activation-free segment with the group's merged kernel and kept activation,
    and exact unless `direct`. Anything that does not fit raises OnnxMergeError: never a
    partial merge.
    """
    by_chain: dict[str, list[PlanGroup]] = {}
    for g in groups:
        by_chain.setdefault(g.chain, []).append(g)
    where: dict[str, list[int]] = {}
    for ci, mc in enumerate(match.chains):
        for c in mc.chain.convs:
            where.setdefault(c.name, []).append(ci)
    out: list[Segment] = []
    owner: dict[int, str] = {}
    for name, chain_groups in by_chain.items():
        chain_groups = sorted(chain_groups, key=lambda g: g.start)
        _check_tiling(name, chain_groups)
        ci = _find_chain(match, name, chain_groups, where)
        if ci in owner:
            raise _Misfit(f"{owner[ci]} and {name} are both {match.chains[ci].chain.name}")
        owner[ci] = name
        mc = match.chains[ci]
        segs = _plan_segments(mc, ci, name, chain_groups, direct)
        out += [c for c in segs if not rewrites_nothing(mc, c)]
    return out


def _check_tiling(name: str, groups: list[PlanGroup]) -> None:
    pos = 0
    for g in groups:
        kept = list(g.kept)
        ok = (
            g.start == pos < g.end
            and kept
            and kept == sorted(set(kept))
            and g.start < kept[0]
            and kept[-1] <= g.end
            and len(g.convs) in (0, len(kept))
        )
        if not ok:
            raise OnnxMergeError(
                f"the plan is malformed: {name} group ({g.start}, {g.end}] keeps {kept}; a "
                f"chain's groups must tile it from position 0 (the last ended at {pos})"
            )
        pos = g.end


def _or_end(conv: str | None) -> str:
    return "the end" if conv is None else repr(conv)


def _find_chain(match: Match, name: str, groups: list[PlanGroup], where: dict) -> int:
    names = [n for g in groups for n in g.convs]
    hits = where.get(names[0], []) if names else []
    if len(hits) == 1 and names[0] and len(names) == sum(len(g.kept) for g in groups):
        ci = hits[0]  # the plan names its convs and the graph has the first one once
        chain = match.chains[ci].chain
        got = [c.name for c in chain.convs if _extra_end(c.name, name) is None]
        if got != names:
            bad = next((a, b) for a, b in zip(names + [None], got + [None], strict=False) if a != b)
            raise _Misfit(
                f"{name} keeps convs {names[0]!r}..{names[-1]!r} ({len(names)}), the model's "
                f"{chain.name} with {names[0]!r} holds {len(got)}; first difference: "
                f"{_or_end(bad[0])} in the plan, {_or_end(bad[1])} in the model"
            )
    else:
        ci = next((i for i, mc in enumerate(match.chains) if mc.chain.name == name), None)
        if ci is None:
            raise _Misfit(f"no chain {name} in the model (it has {len(match.chains)})")
    if not match.chains[ci].mergeable:
        raise _Misfit(f"{name} is not mergeable in the model ({match.chains[ci].note})")
    return ci


def _extra_end(conv_name: str, chain_name: str) -> int | None:
    m = _EXTRA.fullmatch(conv_name)
    return int(m.group(2)) if m and m.group(1) == chain_name else None


def _plan_segments(
    mc: MatchedChain, ci: int, name: str, groups: list[PlanGroup], direct: bool
) -> list[Segment]:
    """Map `name`'s groups onto the positions of chain `mc` of the fine-tune graph."""
    chain = mc.chain
    n = chain.length
    ends = [_extra_end(chain.conv(q).name, name) for q in range(1, n + 1)]
    want = sum(len(g.kept) for g in groups)
    have = sum(e is None for e in ends)
    if want != have:
        raise _Misfit(
            f"{name} keeps {want} convs, the model's {chain.name} has {have}"
            + (f" (and {n - have} doubling or affine 1x1 convs)" if n > have else "")
        )
    q, segs = 0, []
    for g in groups:
        off, regular = q, 0
        while q < n:
            end = ends[q]
            if end is None:
                if regular == len(g.kept):
                    break
                regular += 1
            elif not g.start < end <= g.end:
                break
            q += 1
        if regular < len(g.kept):
            raise _Misfit(
                f"{name} group ({g.start}, {g.end}]: conv {chain.conv(q + 1).name!r} at "
                f"position {q + 1} of the model's {chain.name} belongs to no group there"
            )
        segs.append(Segment(ci, off, q, tuple(range(off + 1, q + 1))))
    if q != n:
        raise _Misfit(f"position {q + 1} of the model's {chain.name} is in no group of {name}")
    for g, seg in zip(groups, segs, strict=True):
        s, e, kept = seg.start, seg.end, seg.kept
        at = f"{name} group ({g.start}, {g.end}] (positions ({s}, {e}] of the model's {chain.name})"
        if not chain.is_valid(s, e):
            raise _Misfit(f"{at} is not a valid segment there (a break or a residual crosses)")
        inner = [p for p in range(s + 1, e) if chain.activations[p] is not None]
        if inner:
            raise _Misfit(f"{at} has a {chain.activations[inner[0]]} activation inside")
        if chain.activations[e] != g.activation_kept:
            raise _Misfit(
                f"{at} ends with activation {chain.activations[e]}, the plan with "
                f"{g.activation_kept}"
            )
        kernel = list(signature(chain, s, e, kept).kernel)
        if kernel != list(g.kernel):
            raise _Misfit(f"{at} merges to a {kernel} kernel, the plan's to {list(g.kernel)}")
        if not direct and not rewrites_nothing(mc, seg) and not _exact(mc, s, e):
            raise OnnxMergeError(
                f"{at}: a later conv pads, so the merge would be exact in the interior only "
                "(not a fine-tune graph? --direct merges it anyway)"
            )
    return segs
