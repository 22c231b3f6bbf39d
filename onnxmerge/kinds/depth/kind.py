"""Depth compression as a compression kind (see kinds/__init__.py for the seam).

Candidates are segments of conv chains with the one conv each becomes (candidates.py);
importance is the output distortion with that one segment swapped for its (calibrated)
merged conv (importance.py); the solver is LayerMerge's one-stage DP or Kim et al.'s
two-stage DP (solve/) over the chains laid end to end; the rewrite merges each chosen segment
into one Conv, or writes its fine-tune form (passes/).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import Chain, Segment
from onnxmerge.errors import NothingToRemove, OnnxMergeError
from onnxmerge.graph.conv import conv_weight
from onnxmerge.graph.names import Names
from onnxmerge.importance import Job, importance_table
from onnxmerge.kinds import Kind, Selection
from onnxmerge.kinds.depth.candidates import (
    Candidate,
    dominated,
    enumerate_candidates,
    signature,
)
from onnxmerge.kinds.depth.segments import rewrites_nothing, segment_io, segment_linear
from onnxmerge.match import Match
from onnxmerge.passes.finetune_form import finetune_group
from onnxmerge.passes.merge_group import merge_group
from onnxmerge.plan import Plan, PlanGroup
from onnxmerge.solve import METHODS, Entry, Solution, fastest_plan, solve


class _Composer:
    """Composes candidates in order, sharing prefixes between those of one chain and start."""

    def __init__(self) -> None:
        self.where: tuple | None = None
        self.memo: dict = {}

    def __call__(self, mc, c: Candidate):
        if (c.chain, c.start) != self.where:  # a new start: old prefixes are never reused
            self.memo.clear()
            self.where = (c.chain, c.start)
        return segment_linear(mc, c.segment, self.memo)


def apply_segments(
    graph: gs.Graph, match: Match, segments: Iterable[Segment], form: str, names: Names
) -> list[gs.Node]:
    """Rewrite each segment ("merged": one Conv; "finetune": the fine-tune form) in `graph`.

    Segments that rewrite nothing are skipped. Returns the new Conv nodes (merged form), in
    the order of `segments`. Dead nodes are left for the caller's cleanup().
    """
    if form not in ("merged", "finetune"):
        raise ValueError(f"form must be 'merged' or 'finetune', not {form!r}")
    nodes = []
    for seg in segments:
        mc = match.chains[seg.chain]
        if rewrites_nothing(mc, seg):
            continue
        if form == "merged":
            nodes.append(merge_group(graph, mc, seg, names))
        else:
            finetune_group(graph, mc, seg, names)
    return nodes


def groups_from_segments(
    chains: Sequence[Chain],
    segments: Iterable[Segment],
    latency: Mapping[Segment, float] | None = None,
    importance: Mapping[Segment, float] | None = None,
    match: Match | None = None,
) -> list[PlanGroup]:
    """The plan groups of `segments`, in chain order (`chains[i]` is chain i of the Match);
    `latency` and `importance` give each group's figures (0.0 where missing); with `match`,
    the removed activations are named by their nodes."""
    groups = []
    for seg in sorted(segments, key=lambda g: (g.chain, g.start)):
        chain = chains[seg.chain]
        removed = []
        if match is not None:
            slots = match.chains[seg.chain].slots
            removed = [n.name for p in range(seg.start + 1, seg.end) for n in slots[p - 1].act]
        groups.append(
            PlanGroup(
                chain.name,
                seg.start,
                seg.end,
                list(seg.kept),
                list(signature(chain, seg.start, seg.end, seg.kept).kernel),
                float((latency or {}).get(seg, 0.0)),
                float((importance or {}).get(seg, 0.0)),
                chain.activations[seg.end],
                [chain.conv(p).name for p in seg.kept],
                [chain.conv(p).name for p in seg.pruned],
                removed,
            )
        )
    return groups


def segments_from_plan(match: Match, plan: Plan) -> list[Segment]:
    """The segments of a plan's groups on the network it was made for (chains by name).

    Raises OnnxMergeError for a group that is no valid segment of the model.
    """
    by_name = {mc.chain.name: i for i, mc in enumerate(match.chains)}
    out = []
    for g in plan.groups:
        ci = by_name.get(g.chain)
        ok = (
            ci is not None
            and match.chains[ci].mergeable
            and match.chains[ci].chain.is_valid(g.start, g.end)
        )
        if not ok or not set(g.kept) <= set(range(g.start + 1, g.end + 1)):
            raise OnnxMergeError(
                f"the plan does not fit this model: no valid segment ({g.start}, {g.end}] "
                f"of chain {g.chain!r} (see `onnxmerge inspect`)"
            )
        out.append(Segment(ci, g.start, g.end, tuple(g.kept)))
    return out


@dataclass
class DepthProblem:
    """The chains laid end to end as one position sequence for the depth DPs (solve/)."""

    entries: list[Entry]
    length: int
    method: str
    units: int = 1000

    def _selection(self, sol: Solution) -> Selection:
        items = tuple(e.key for e in sol.segments)
        return Selection(items, sol.latency, sol.importance, all(c.unchanged for c in items))

    def solve(self, budget_ms: float) -> Selection:
        """The best plan within `budget_ms` (solve.InfeasibleBudget below the floor)."""
        sol = solve(self.length, self.entries, budget_ms, method=self.method, units=self.units)
        return self._selection(sol)

    def fastest(self) -> Selection:
        """The fastest plan (exact, no budget grid)."""
        return self._selection(fastest_plan(self.length, self.entries, self.method))


class DepthKind(Kind):
    """Remove activations, prune convs and merge conv runs (LayerMerge / Kim et al. 2023).

    `method`: "layermerge" (one DP over segments and pruned variants) or "depth" (two-stage,
    all convs kept); `max_kernel`: largest merged kernel considered; `candidate_filter`
    (candidate, chain) -> bool keeps only some changed candidates (baselines, tests).
    """

    name = "depth"
    screened = "candidates no faster than their convs unmerged"
    covers_convs = True

    def __init__(
        self,
        method: str = "layermerge",
        max_kernel: int = 7,
        candidate_filter: Callable[[Candidate, Chain], bool] | None = None,
        units: int = 1000,
    ) -> None:
        if method not in METHODS:
            raise OnnxMergeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.max_kernel = max_kernel
        self.candidate_filter = candidate_filter
        self.units = units

    def candidates(self, analysis) -> list[Candidate]:
        """Every candidate segment of every mergeable chain (pruned variants for layermerge)."""
        m = analysis.match
        chains = {i: mc.chain for i, mc in enumerate(m.chains) if mc.mergeable}
        if not chains:
            raise NothingToRemove(
                "depth", "no mergeable conv chains found in the model (see `onnxmerge inspect`)"
            )
        norms = {
            i: {
                p: float(np.abs(conv_weight(m.chains[i].slots[p - 1].conv)[0]).sum())
                for p in range(1, chain.length + 1)
            }
            for i, chain in chains.items()
        }
        prune = self.method == "layermerge"
        cands = enumerate_candidates(chains, norms, prune=prune, max_kernel=self.max_kernel)
        if self.candidate_filter is not None:
            keep = self.candidate_filter
            cands = [c for c in cands if c.unchanged or keep(c, chains[c.chain])]
        if all(c.unchanged for c in cands):
            raise NothingToRemove(
                "depth",
                "no conv chain offers a merge or a removable layer (see `onnxmerge inspect`)",
            )
        return cands

    def key(self, candidate: Candidate) -> str:
        """The segment's text key (Segment.key)."""
        return candidate.segment.key()

    def costs(self, candidate: Candidate) -> tuple:
        """The one conv the segment merges into."""
        return ((candidate.signature, 1.0),)

    def unchanged(self, candidate: Candidate) -> bool:
        """One original conv (Segment.unchanged)."""
        return candidate.unchanged

    def screen(self, candidates, latency, scoring) -> list[Candidate]:
        """Drop merged candidates no faster than their convs unmerged (candidates.dominated).

        Only LayerMerge can drop them (the depth method reads a span's importance off its
        merged entry even where the span ends up split into faster pieces), and only with the
        built-in distortion, which scores nothing above the unchanged network.
        """
        if self.method != "layermerge" or scoring.distortion_fn is not None:
            return list(candidates)
        slow = dominated(candidates, {c.signature: latency[c] for c in candidates})
        return [c for c in candidates if c not in slow]

    def importance(self, analysis, candidates, scoring) -> dict:
        """Distortion of each changed candidate swapped alone into the network (importance.py)."""
        m, composer, jobs = analysis.match, _Composer(), []
        for c in candidates:
            if c.unchanged:
                continue
            mc = m.chains[c.chain]
            src, dst = (t.name for t in segment_io(mc, c.start, c.end))
            jobs.append(
                Job(
                    c,
                    src,
                    dst,
                    lambda mc=mc, c=c: composer(mc, c),
                    f"{mc.chain.name}_cand_{c.start}_{c.end}",
                    (c.chain, c.start, c.end, c.kept),
                )
            )
        return importance_table(
            analysis.reference,
            scoring.feeds,
            jobs,
            calibrate=scoring.calibrate,
            fit_options=scoring.fit_options,
            distortion_fn=scoring.distortion_fn,
            progress=scoring.progress,
            groups=scoring.groups,
        )

    def problem(self, candidates, latency, importance) -> DepthProblem:
        """The chains laid end to end for the depth DPs, with the tables as entries."""
        chains = sorted({c.chain for c in candidates})
        lengths = {c.chain: 0 for c in candidates}
        for c in candidates:
            lengths[c.chain] = max(lengths[c.chain], c.end)
        offsets, total = {}, 0
        for ci in chains:
            offsets[ci], total = total, total + lengths[ci]
        entries = [
            Entry(
                offsets[c.chain] + c.start,
                offsets[c.chain] + c.end,
                latency[c],
                importance.get(c, 0.0),
                key=c,
                all_kept=c.all_kept,
                changes=c.end - c.start - 1 + len(c.segment.pruned),
            )
            for c in candidates
        ]
        return DepthProblem(entries, total, self.method, self.units)

    def apply(self, graph, match, items, form, names) -> list[gs.Node]:
        """Merge (or write the fine-tune form of) the chosen segments (apply_segments)."""
        segments = [getattr(i, "segment", i) for i in items]
        return apply_segments(graph, match, segments, form, names)

    def record(self, analysis, selection, latency, importance) -> dict:
        """One plan group per chosen segment (groups_from_segments)."""
        chains = [mc.chain for mc in analysis.match.chains]
        return {
            "groups": groups_from_segments(
                chains,
                [c.segment for c in selection.items],
                latency={c.segment: latency[c] for c in selection.items},
                importance={c.segment: importance.get(c, 0.0) for c in selection.items},
                match=analysis.match,
            )
        }

    def from_record(self, analysis, plan) -> tuple[Segment, ...]:
        """The segments of a saved plan's groups (segments_from_plan)."""
        return tuple(segments_from_plan(analysis.match, plan))
