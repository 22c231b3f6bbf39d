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
   key for the importance cache; `costs(c)` the convs (ConvSignature, weight) whose weighted
   table latency is the candidate's cost (a conv shared by two width groups is charged half to
   each); `unchanged(c)` says the candidate leaves the network as it is (its distortion is 0,
   and it is never scored).
3. `importance(analysis, candidates, scoring)`: minus the distortion of each changed
   candidate, measured on calibration data (problem.Scoring carries the reference network,
   the feeds, the fit options and an optional user distortion function).
4. `problem(candidates, latency, importance)`: a `Problem` whose `solve(budget_ms)` returns
   the best `Selection` within the budget (raising solve.InfeasibleBudget below its floor)
   and `fastest()` the fastest one. Keep the solver pure numpy (solve/).
5. `apply(graph, match, items, form, names)`: rewrite a copy of the normalized graph for the
   chosen items, in the "merged" (deployed) or "finetune" form; return the Conv nodes to
   refit, which calibration fits toward the original tensors of the same names (a `Refit`
   where only some of the original's channels remain, or where a node lost input features
   whose mean calibration puts back in its bias).
6. `record(analysis, selection, latency, importance)` and `from_record(analysis, plan)`:
   the plan's account of the selection (a dict of Plan fields: depth fills `groups`, width
   `width`), and back (for --from-plan).
Nothing in compress.py, problem.py or search.py changes for a new kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs  # noqa: F401

    from onnxmerge.analysis import Analysis
    from onnxmerge.graph.names import Names
    from onnxmerge.match import Match
    from onnxmerge.plan import Plan
    from onnxmerge.problem import Scoring
    from onnxmerge.signature import ConvSignature


@dataclass(frozen=True)
class Refit:
    """A node for calibration to refit (a Conv), toward the original tensor of the same name,
    whose output keeps only the original's channels `kept_out` (width pruning); `lost`: the
    input features width pruning removed from it (calibration.compensate.Lost), whose mean
    goes into its bias first (a Gemm head is only compensated, not refit)."""

    node: gs.Node
    kept_out: Any = None  # np.ndarray of kept output channels, or None for all
    lost: Any = None  # calibration.compensate.Lost, or None


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
    method: str = ""  # the solver, as the plan records it
    screened: ClassVar[str] = "candidates"  # what `screen` drops, for the log
    # The unchanged candidates are (nearly) all the network's convs, each whole (depth; not
    # width's shares): the input's profile can scale the table to them (problem.build_problem).
    covers_convs: ClassVar[bool] = False

    @abstractmethod
    def candidates(self, analysis: Analysis) -> list[Hashable]:
        """The menu of options for the solver."""

    @abstractmethod
    def key(self, candidate: Any) -> str:
        """A stable text key of a candidate (importance cache)."""

    @abstractmethod
    def costs(self, candidate: Any) -> tuple[tuple[ConvSignature, float], ...]:
        """(conv, weight) pairs whose weighted table latency is the candidate's cost."""

    def held(self, remainder_ms: float, candidates: list) -> dict[Any, float]:
        """Of `remainder_ms`, the input's time outside the candidates' convs, the part each
        candidate keeps (ms; the unchanged ones' sum leaves the remainder): for a kind whose
        candidates shrink the ops between convs too (width). None by default."""
        return {}

    def priced(self, ms: dict[ConvSignature, float]) -> None:  # noqa: B027 (optional hook)
        """The table's time (ms, in network) of every conv `costs` named, for a kind whose
        plans cost more or less than their candidates' sum (width); ignored by default."""

    @abstractmethod
    def unchanged(self, candidate: Any) -> bool:
        """The candidate leaves the network as it is (distortion 0)."""

    def prepare(self, analysis: Analysis, backend: Any, cache_dir: Any, scoring: Scoring) -> None:
        """Called by the driver before `candidates`, with the backend, the cache folder and
        the calibration data (width pruning probes the backend's channel staircase and
        orders channels here). Default: nothing."""
        return None

    def notes(self) -> list[str]:
        """Report lines about the kind's setup (e.g. the probed channel alignment)."""
        return []

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
    ) -> list[gs.Node | Refit]:
        """Rewrite `graph` for `items` ("merged" or "finetune" form); return the convs to
        refit (nodes, or Refit where channels were removed)."""

    @abstractmethod
    def record(
        self,
        analysis: Analysis,
        selection: Selection,
        latency: Mapping[Any, float],
        importance: Mapping[Any, float],
    ) -> dict[str, Any]:
        """The Plan fields that record a selection (e.g. {"groups": [...]})."""

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
KINDS: dict[str, tuple[str, str]] = {
    "depth": ("onnxmerge.kinds.depth.kind", "DepthKind"),
    "width": ("onnxmerge.kinds.width.kind", "WidthKind"),
}

# What `--prune` may ask for: a kind, or "both" (width then depth, both.py). The default is the
# mode the fidelity benchmark showed distorting least at equal measured speed (README,
# "Fidelity on a real network").
PRUNE_MODES = ("depth", "width", "both")
DEFAULT_PRUNE = "both"
