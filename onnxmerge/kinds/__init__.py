"""Compression kinds: what onnxmerge can remove from a network, behind one seam.

The driver (compress.py) knows no kind. It asks a kind for its candidates, times each
candidate's convs on the backend (latency table), has the kind score them (importance),
hands both tables to the kind's solver, and runs the budget search (search.py): solve at a
budget, build the network the selection stands for, measure it end to end, move the budget.
Depth compression (kinds.depth: remove activations, prune and merge conv layers; LayerMerge,
Kim et al. 2023) is the first kind.

How to add a kind (e.g. channel pruning):
1. Subclass `Kind` in `kinds/<name>/` and register it in `KINDS` below.
2. `candidates(analysis)`: the menu, as hashable objects, one per option the solver may pick
   (for depth: a segment of a chain and the conv it merges into). `key(c)` is a stable text
   key for the importance cache; `signatures(c)` the convs (ConvSignature) whose summed table
   latency is the candidate's cost; `unchanged(c)` says the candidate leaves the network as
   it is (its distortion is 0, and it is never scored).
3. `importance(analysis, candidates, scoring)`: minus the distortion of each changed
   candidate, measured on calibration data (problem.Scoring carries the reference network,
   the feeds, the fit options and an optional user distortion function).
4. `problem(candidates, latency, importance)`: a `Problem` whose `solve(budget_ms)` returns
   the best `Selection` within the budget (raising solve.InfeasibleBudget below its floor)
   and `fastest()` the fastest one. Keep the solver pure numpy (solve/).
5. `apply(graph, match, items, form, names)`: rewrite a copy of the normalized graph for the
   chosen items, in the "merged" (deployed) or "finetune" form; return the new Conv nodes,
   which calibration refits toward the original tensors of the same names.
6. `record(analysis, selection, latency, importance)` and `from_record(analysis, plan)`:
   the plan's account of the selection, and back (for --from-plan).
Nothing in compress.py, problem.py or search.py changes for a new kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxmerge.analysis import Analysis
    from onnxmerge.graph.names import Names
    from onnxmerge.match import Match
    from onnxmerge.plan import Plan, PlanGroup
    from onnxmerge.problem import Scoring
    from onnxmerge.signature import ConvSignature


@dataclass(frozen=True)
class Selection:
    """What a kind's solver chose at one budget.

    `items` are the chosen candidates in network order; `latency` (ms) is their predicted
    table latency, `importance` their summed importance (<= 0); `unchanged` says the
    selection leaves the network as it is.
    """

    items: tuple[Hashable, ...]
    latency: float
    importance: float
    unchanged: bool


class Problem(Protocol):
    """A kind's solver over its latency and importance tables."""

    def solve(self, budget_ms: float) -> Selection:
        """The most important selection whose predicted latency fits `budget_ms`.

        Raises solve.InfeasibleBudget when none fits.
        """

    def fastest(self) -> Selection:
        """The selection of least predicted latency."""


class Kind(ABC):
    """One compression kind (see the module docstring for the contract)."""

    name: ClassVar[str]

    @abstractmethod
    def candidates(self, analysis: Analysis) -> list[Hashable]:
        """The menu of options for the solver."""

    @abstractmethod
    def key(self, candidate: Any) -> str:
        """A stable text key of a candidate (importance cache)."""

    @abstractmethod
    def signatures(self, candidate: Any) -> tuple[ConvSignature, ...]:
        """The convs whose summed table latency is the candidate's cost."""

    @abstractmethod
    def unchanged(self, candidate: Any) -> bool:
        """The candidate leaves the network as it is (distortion 0)."""

    def screen(self, candidates: list, latency: Mapping[Any, float], scoring: Scoring) -> list:
        """Candidates worth scoring, once their latencies are known (default: all)."""
        return candidates

    @abstractmethod
    def importance(self, analysis: Analysis, candidates: Sequence, scoring: Scoring) -> dict:
        """Importance (minus distortion) of each changed candidate."""

    @abstractmethod
    def problem(
        self, candidates: Sequence, latency: Mapping[Any, float], importance: Mapping[Any, float]
    ) -> Problem:
        """The solver over the tables (latencies in ms, already scaled by the driver)."""

    @abstractmethod
    def apply(
        self, graph: gs.Graph, match: Match, items: Sequence, form: str, names: Names
    ) -> list[gs.Node]:
        """Rewrite `graph` for `items` ("merged" or "finetune" form); return the new Convs."""

    @abstractmethod
    def record(
        self,
        analysis: Analysis,
        selection: Selection,
        latency: Mapping[Any, float],
        importance: Mapping[Any, float],
    ) -> list[PlanGroup]:
        """The plan's groups for a selection."""

    @abstractmethod
    def from_record(self, analysis: Analysis, plan: Plan) -> tuple:
        """The items a saved plan stands for on this analysis (OnnxMergeError if it does not
        fit)."""


def get_kind(name: str, **options: Any) -> Kind:
    """The kind called `name`, configured with its options (e.g. method, max_kernel)."""
    from onnxmerge.errors import OnnxMergeError

    if name not in KINDS:
        raise OnnxMergeError(f"unknown compression kind {name!r}; choose one of {', '.join(KINDS)}")
    module, cls = KINDS[name]
    import importlib

    return getattr(importlib.import_module(module), cls)(**options)


# name -> (module, class), imported when asked for.
KINDS: dict[str, tuple[str, str]] = {"depth": ("onnxmerge.kinds.depth.kind", "DepthKind")}
