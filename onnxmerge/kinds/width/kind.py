"""Width pruning as a compression kind: remove whole channels of dependency groups.

Candidates are (group, width) pairs: each prunable channel dependency group (groups.py) at
full width and at the multiples of the backend's channel alignment down to `min_fraction`
of it (latency/staircase.py: conv latency is a staircase in the channel count, LACP, Liu et al.
2021), keeping the channels the consumers need most on calibration data (greedy structured
OBS, selection.py; `selection="norm"`: the largest SP-LAMP norms, scores.py, no data). Once
the widths are timed, `screen` keeps each group's stair edges only: a width stays if it is
faster than every wider one by more than 2%.

Cost (cost.py): the knapsack's additive shares of each conv per group (linearized, as HALP
does), and the product prediction of a whole plan that corrects them where a conv narrows on
more than one side. The solver is the multiple-choice knapsack (solve/knapsack.py): one width
per group, the most important plan whose predicted latency fits the budget.

The rewrite (passes/prune_channels.py) slices producers, consumers and tied parameters;
calibration then refits every dense conv that lost input channels toward the
original network's output (its kept rows), the least-squares reconstruction of ThiNet / CP
(He et al. 2017). The pruned graph is its own fine-tune graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from onnxmerge.errors import NothingToRemove, OnnxMergeError
from onnxmerge.kinds import Kind, Refit, Selection
from onnxmerge.kinds.width.cost import Predictor, Share, predictor, shares, volumes
from onnxmerge.kinds.width.groups import Group, channel_groups
from onnxmerge.kinds.width.scores import (
    channel_norms,
    joint_scorer,
    measured_importance,
    splamp_scores,
    strongest,
)
from onnxmerge.kinds.width.selection import kept
from onnxmerge.plan import WidthGroup
from onnxmerge.solve import InfeasibleBudget
from onnxmerge.solve.evolution import evolve
from onnxmerge.solve.knapsack import Option, fastest_plan, solution_of, solve_knapsack

IMPORTANCES = ("measured", "splamp")
SEARCHES = ("dp", "evolution")
SELECTIONS = ("obs", "norm")
STAIR_TOLERANCE = 0.02  # a narrower width must be this much faster (relative) to be offered


@dataclass(frozen=True)
class WidthCandidate:
    """Group `group` (of `full` channels) kept at `width`: the channels `kept`."""

    group: int
    width: int
    full: int
    kept: tuple[int, ...]

    @property
    def unchanged(self) -> bool:
        """The group keeps every channel."""
        return self.width == self.full

    @property
    def removed(self) -> int:
        """Channels removed."""
        return self.full - self.width


class WidthKind(Kind):
    """Remove whole channels at the widths the backend runs fastest (SP-LAMP, LACP).

    `align`: channel step of the candidate widths, or "auto" (probed on the backend in
    `prepare`, cached); `min_width`: the narrowest width offered, as a fraction of a group's
    channels; `importance`: "measured" or "splamp" (scores.py); `max_options`: widths
    offered per group before screening; `units`: knapsack grid steps per group; `search`:
    "dp" (the knapsack) or "evolution" (the knapsack's choice refined by the measured
    distortion of all cuts together, solve/evolution.py); `selection`: which channels a
    cut keeps, "obs" (those the consumers' least-squares refit needs most on the calibration
    data, selection.py) or "norm" (the largest weight norms); None: "obs" with measured
    importance, "norm" with SP-LAMP (data-free).
    Raises OnnxMergeError for a bad option.
    """

    name = "width"
    screened = "widths off the latency staircase's edges"

    def __init__(
        self,
        align: int | str = "auto",
        min_width: float = 0.25,
        importance: str = "measured",
        max_options: int = 8,
        units: int = 100,
        search: str = "dp",
        selection: str | None = None,
        **_: object,
    ) -> None:
        selection = selection or ("obs" if importance == "measured" else "norm")
        if selection not in SELECTIONS:
            choices = ", ".join(SELECTIONS)
            raise OnnxMergeError(f"unknown channel selection {selection!r}; choose {choices}")
        if importance not in IMPORTANCES:
            choices = ", ".join(IMPORTANCES)
            raise OnnxMergeError(f"unknown width importance {importance!r}; choose {choices}")
        if search not in SEARCHES:
            raise OnnxMergeError(f"unknown width search {search!r}; choose {', '.join(SEARCHES)}")
        if not 0 < min_width <= 1:
            raise OnnxMergeError(f"min width must be in (0, 1], got {min_width}")
        if align != "auto" and (not isinstance(align, int) or align < 1):
            raise OnnxMergeError(f"channel alignment must be 'auto' or a positive int: {align!r}")
        self.align = align
        self.min_width = min_width
        self.importance_mode = importance
        self.max_options = max_options
        self.units = units
        self.search = search
        self.selection = selection
        self._orders: dict[int, list[int]] = {}  # selection "obs": group id -> removal order
        self._order_s: float | None = None  # None: the orders came from the cache
        self.method = "knapsack+evolution" if search == "evolution" else "knapsack"
        self._joint = None  # search="evolution": candidates -> -joint distortion
        self._groups: dict[int, Group] = {}
        self._shares: dict[int, list[Share]] = {}
        self._ms: dict = {}  # in-network conv times (priced), for the product prediction
        self._volumes: dict[int, float] = {}  # group id -> tensor volume (cost.volumes)
        self._held: dict = {}  # candidate -> ms of the remainder it holds (held)
        self._probed = False

    def prepare(self, analysis, backend, cache_dir, scoring) -> None:
        """Resolve align="auto": the backend's stair width (staircase.probe_alignment); with
        selection "obs", order each prunable group's channels on the fit half of the
        calibration feeds (the half the output's refit uses, consumers.channel_orders)."""
        if self.align == "auto":
            from onnxmerge.latency.staircase import probe_alignment
            from onnxmerge.latency.table import LatencyTable

            with LatencyTable(cache_dir, backend) as table:
                self.align = probe_alignment(table)
            self._probed = True
        if self.selection == "obs" and scoring is not None:
            from onnxmerge.kinds.width.consumers import cached_orders

            clock = time.perf_counter()
            self._orders, new = cached_orders(analysis, int(self.align), scoring, cache_dir)
            self._order_s = time.perf_counter() - clock if new else None

    def notes(self) -> list[str]:
        """The alignment used, how many groups are prunable, the channel selection, the
        search."""
        prunable = sum(g.prunable for g in self._groups.values())
        how = "probed on the backend" if self._probed else "given"
        lines = [
            f"channel alignment {self.align} ({how}); {prunable} of {len(self._groups)} "
            "channel groups prunable"
        ]
        if self._orders:
            took = "cache" if self._order_s is None else f"{self._order_s:.1f} s"
            lines.append(f"channels kept by OBS on calibration data ({len(self._orders)} groups "
                         f"ordered, {took})")  # fmt: skip
        else:
            lines.append("channels kept by weight norm")
        if self.search == "evolution":
            lines.append("width search: the knapsack's widths refined by evolution on the joint")
            lines[-1] += " distortion of all cuts (held-out calibration inputs)"
        return lines

    def candidates(self, analysis) -> list[WidthCandidate]:
        """Every prunable group at full width and at its offered widths."""
        from onnxmerge.latency.staircase import width_options

        align = 8 if self.align == "auto" else int(self.align)
        groups = channel_groups(analysis.graph, align)
        self._groups = {g.id: g for g in groups}
        self._shares = shares(analysis.graph, groups)
        self._volumes = volumes(analysis.graph, groups)
        keep = set(analysis.keep)
        out = []
        for g in groups:
            if not g.prunable or g.id not in self._shares or keep & _touched(g):
                continue
            norms, order = channel_norms(analysis.graph, g), self._orders.get(g.id)
            for w in width_options(g.width, align, self.min_width, self.max_options, g.blocks):
                chosen = (
                    strongest(norms, w, g.blocks) if order is None else kept(order, w, g.blocks)
                )
                out.append(WidthCandidate(g.id, w, g.width, chosen))
        if all(c.unchanged for c in out):
            prunable = sum(g.prunable for g in groups)
            if prunable and not any(g.prunable and g.id in self._shares for g in groups):
                why = "no prunable channel group touches a conv the latency table times"
                raise NothingToRemove("width", why + " (1-D and 2-D ones; 3-D convs are not)")
            raise NothingToRemove(
                "width",
                f"no channel group can lose channels in steps of {align} down to "
                f"{self.min_width:g} of its width ({prunable} of {len(groups)} groups are "
                "prunable, see `onnxmerge inspect --groups`; --width-align and --min-width "
                "set the step and the floor)",
            )
        return out

    def key(self, candidate: WidthCandidate) -> str:
        """Importance mode, group id and width (ids are fixed for one normalized graph); "r":
        scored refit (scores.joint_scorer; older cache entries were not); "obs": channels
        chosen by OBS (the feeds, in the cache's digest, decide which)."""
        how = "r:obs" if candidate.group in self._orders else "r"
        return f"{self.importance_mode}:{how}:g{candidate.group}:w{candidate.width}"

    def unchanged(self, candidate: WidthCandidate) -> bool:
        """The group at full width."""
        return candidate.unchanged

    def costs(self, candidate: WidthCandidate) -> tuple:
        """The group's conv shares with its channels at the candidate's width."""
        cut = candidate.removed
        return tuple((s.at(cut), s.weight) for s in self._shares.get(candidate.group, ()))

    def held(self, remainder_ms: float, candidates: list) -> dict:
        """The remainder spread over all groups by tensor volume, each prunable group's part
        in proportion to the candidate's width (cost.py: between the convs)."""
        total = sum(self._volumes.values())
        alpha = remainder_ms / total if total > 0 else 0.0
        self._held = {
            c: alpha * self._volumes.get(c.group, 0.0) * c.width / c.full for c in candidates
        }
        return self._held

    def priced(self, ms: dict) -> None:
        """Keep the per-conv times: a plan is predicted from them (cost.Predictor)."""
        self._ms = dict(ms)

    def screen(self, candidates, latency, scoring) -> list:
        """Each group's stair edges: widths faster than every wider one by > 2%."""
        from onnxmerge.latency.staircase import stair_widths

        by_group: dict[int, dict[int, WidthCandidate]] = {}
        for c in candidates:
            by_group.setdefault(c.group, {})[c.width] = c
        out = []
        for widths in by_group.values():
            ws = sorted(widths)
            edges = stair_widths(ws, [latency[widths[w]] for w in ws], STAIR_TOLERANCE)
            out += [widths[w] for w in edges]
        return out

    def importance(self, analysis, candidates, scoring) -> dict:
        """Minus the distortion of each changed candidate cut alone (scores.py)."""
        changed = [c for c in candidates if not c.unchanged]
        if self.search == "evolution":
            self._joint = joint_scorer(analysis, self, scoring)
        if self.importance_mode == "measured":
            return measured_importance(analysis, self, changed, scoring)
        values = {}
        for c in changed:
            sp = splamp_scores(channel_norms(analysis.graph, self._groups[c.group]))
            values[c] = float(sp[list(c.kept)].sum() - sp.sum())  # V(w) - V(C) for the top w
        return values

    def problem(self, candidates, latency, importance) -> WidthProblem:
        """One class per group (its widths) for the multiple-choice knapsack, solved to the
        product prediction of the conv times `priced` gave (cost.py; none: the shares)."""
        classes: dict[int, list[Option]] = {}
        for c in candidates:
            option = Option(latency[c], importance.get(c, 0.0), key=c, changes=c.removed)
            classes.setdefault(c.group, []).append(option)
        predict = None
        if self._ms:
            full = [c for c in candidates if c.unchanged]
            raw = sum(w * self._ms.get(s, 0.0) for c in full for s, w in self.costs(c))
            conv_part = sum(latency[c] - self._held.get(c, 0.0) for c in full)
            scale = conv_part / raw if raw > 0 else 1.0
            predict = predictor(self._shares, candidates, self._ms, scale, self._held)
        units = self.units * max(1, len(classes))
        return WidthProblem(list(classes.values()), units, self._joint, predict)

    def apply(self, graph, match, items, form, names) -> list[Refit]:
        """Cut the chosen groups (both forms: the pruned graph is its own fine-tune graph);
        return the dense convs that lost input channels, to refit, and every linear consumer
        that lost inputs with what it lost (calibration.compensate: mean replacement)."""
        from onnxmerge.passes.prune_channels import kept_features, lost_inputs, prune_channels

        groups = channel_groups(graph, 1)
        keep = {c.group: list(c.kept) for c in items if not c.unchanged}
        if not keep:
            return []
        kept = kept_features(graph, groups, keep)
        lost = lost_inputs(graph, kept)
        refit = [
            Refit(n, kept.get(n.outputs[0].name), lost[n.name])
            for n in graph.nodes
            if n.name in lost
        ]
        prune_channels(graph, groups, keep, names)
        return refit

    def record(self, analysis, selection, latency, importance) -> dict:
        """{"width": one WidthGroup per cut group, its members named by tensor}."""
        out = []
        for c in selection.items:
            if c.unchanged:
                continue
            g = self._groups[c.group]
            out.append(
                WidthGroup(
                    g.id,
                    _members(g),
                    g.width,
                    list(c.kept),
                    float(latency.get(c, 0.0)),
                    float(importance.get(c, 0.0)),
                )
            )
        return {"width": out, "width_importance": self.importance_mode}

    def from_record(self, analysis, plan) -> tuple:
        """The candidates a saved width plan stands for, its groups found by their members."""
        by_members = {_key(_members(g)): g for g in channel_groups(analysis.graph, 1)}
        items = []
        for wg in plan.width:
            g = by_members.get(_key(wg.members))
            if g is None or g.width != wg.channels or not g.prunable:
                raise OnnxMergeError(
                    f"the plan does not fit this model: no prunable channel group of "
                    f"{wg.channels} channels in {wg.members[0][0]!r} (see `onnxmerge inspect "
                    "--groups`)"
                )
            items.append(WidthCandidate(g.id, wg.width, g.width, tuple(wg.kept)))
        return tuple(items)


def _touched(g: Group) -> set[str]:
    """The names of the nodes and tensors a group touches (for --keep)."""
    nodes = {n for n, _ in g.producers} | {n for n, _ in g.consumers} | set(g.ties)
    return nodes | {m.tensor for m in g.members}


def _members(g: Group) -> list[list]:
    return [[m.tensor, m.start, m.end] for m in g.members]


def _key(members: list[list]) -> tuple:
    return tuple(tuple(m) for m in members)


@dataclass
class WidthProblem:
    """The multiple-choice knapsack over the groups' widths (solve/knapsack.py)."""

    classes: list[list[Option]]
    units: int = 1000
    joint: Callable[[tuple], float] | None = None  # set: refine by evolution on it
    predict: Predictor | None = None  # None: a plan costs its options' summed latency

    def _selection(self, sol) -> Selection:
        items = tuple(sorted(sol.keys, key=lambda c: c.group))
        latency = sol.latency if self.predict is None else self.predict(items)
        return Selection(items, latency, sol.importance, all(c.unchanged for c in items))

    def solve(self, budget_ms: float) -> Selection:
        """The most important widths predicted within `budget_ms` (InfeasibleBudget below the
        fastest plan); with `joint`, the knapsack's choice refined by evolution
        (solve/evolution.py) under the same prediction."""
        floor = fastest_plan(self.classes)

        def knapsack(ms: float):
            try:
                return solve_knapsack(self.classes, ms, units=self.units)
            except InfeasibleBudget:  # the grid rounds up: just above the fastest plan
                if ms >= floor.latency:
                    return floor
                raise

        if self.predict is None:
            sol = knapsack(budget_ms)
        else:
            top = sum(max(o.latency for o in c) for c in self.classes) * (1 + 1e-6)
            sol, _ = self.predict.solve(knapsack, budget_ms, floor.latency, top)
        if self.joint is not None:
            joint, classes, predict = self.joint, self.classes, self.predict

            def keys(indices: tuple[int, ...]) -> tuple:
                return tuple(c[k].key for c, k in zip(classes, indices, strict=True))

            def score(indices: tuple[int, ...]) -> float:
                return joint(keys(indices))

            latency = None if predict is None else (lambda indices: predict(keys(indices)))
            evolved = evolve(classes, budget_ms, sol.indices, score, latency=latency)
            sol = solution_of(classes, evolved.indices)
        return self._selection(sol)

    def fastest(self) -> Selection:
        """Every group at its fastest width."""
        return self._selection(fastest_plan(self.classes))
