"""Multiple-choice knapsack on the latency grid: one option per class, most importance that fits.

How the width kind uses it (spec ``channel-pruning-spec.md`` §5.2-5.3): a *class* is one channel
dependency group; its *options* are the kept widths the backend offers for that group (the
stair edges of ``latency.staircase``, the original width always among them). An option's
``latency`` is the summed latency change of every conv that touches the group (the group at this
width, each conv's other side held at its current width), plus the memory-bound term of the
group's non-conv ops; its ``importance`` is minus the measured output distortion of keeping that
width; ``changes`` may count the removed channels so equal-distortion plans prune least.
Latency changes are negative for narrower widths: :func:`shift_negative` moves each class's row
to start at zero and returns the total shift, which the caller adds to the budget (HALP's
"enlarge capacity for negative latency"). The pairwise (in x out) conv cost is linearized
around the current widths and re-solved as the budget is walked down (§5.3); this module sees
only the additive rows.

Recurrence, on the grid of ``solve.entries`` (``g = ceil(latency / unit)`` so a plan never
overshoots, ``tau = floor(budget / unit)``)::

    D[0, t] = 0                                              for all 0 <= t <= tau
    D[i, t] = max over options k of class i with g(k) <= t of  D[i - 1, t - g(k)] + I(k)

``D[i, t]`` is the best summed importance of one option in each of the first ``i`` classes
whose grid latency is at most ``t``; the answer is ``D[n, tau]``, recovered through per-cell
argmax pointers. Ties within 1e-9 in importance go to fewer changes, then to lower exact
latency, as in ``layermerge.grid_dp``; the DP carries both alongside and stays exact under that
order. Each option is one vectorised numpy step over all ``t``: O(classes * options * tau)
numpy work and O(classes * tau) pointer memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxmerge.solve.entries import (
    IMPORTANCE_TOL,
    MAX_CELLS,
    Grid,
    InfeasibleBudget,
    make_grid,
    relax,
)

__all__ = [
    "KnapsackSolution",
    "Option",
    "fastest_plan",
    "grid_knapsack",
    "max_importance_plan",
    "min_latency",
    "shift_negative",
    "solution_of",
    "solve_knapsack",
]


@dataclass(frozen=True)
class Option:
    """One choice of a class: ``latency`` ms (>= 0), ``importance`` (higher is better).

    ``key`` is returned untouched; ``changes`` counts what the option removes (e.g. pruned
    channels): among plans of equal importance the fewest changes win, then the lower latency.
    Any object with ``latency``, ``importance`` and ``key`` (an :class:`~onnxmerge.solve.Entry`
    too) is accepted where an Option is.
    """

    latency: float
    importance: float
    key: object = None
    changes: int = 0

    @property
    def change_count(self) -> int:
        """``changes`` (the name :class:`~onnxmerge.solve.Entry` uses)."""
        return self.changes


@dataclass
class KnapsackSolution:
    """A plan: the chosen option of every class, in class order, and its totals."""

    choices: list[Any]
    indices: list[int]
    latency: float
    importance: float
    changes: int

    @property
    def keys(self) -> list[object]:
        """The ``key`` of each chosen option, in class order."""
        return [option.key for option in self.choices]


def _changes(option: Any) -> int:
    count = getattr(option, "change_count", None)
    if count is None:
        count = getattr(option, "changes", None)
    return int(count or 0)


def _validate(classes: Iterable[Iterable[Any]]) -> list[list[Any]]:
    """Lists of options, checked once: every class non-empty, latencies finite and >= 0."""
    out = [list(options) for options in classes]
    for i, options in enumerate(out):
        if not options:
            raise ValueError(f"class {i} has no options; every class must offer at least one")
        for option in options:
            latency, importance = option.latency, option.importance
            if not (math.isfinite(latency) and latency >= 0):
                raise ValueError(
                    f"class {i}: option {option.key!r} has bad latency {latency!r} "
                    f"(must be finite and >= 0; see shift_negative)"
                )
            if not math.isfinite(importance):
                raise ValueError(
                    f"class {i}: option {option.key!r} has non-finite importance {importance!r}"
                )
    return out


def solution_of(classes: Sequence[Sequence[Any]], indices: Sequence[int]) -> KnapsackSolution:
    """The plan choosing option `indices[i]` of class i, with its totals."""
    choices = [options[k] for options, k in zip(classes, indices, strict=True)]
    return KnapsackSolution(
        choices=choices,
        indices=list(indices),
        latency=math.fsum(option.latency for option in choices),
        importance=math.fsum(option.importance for option in choices),
        changes=sum(_changes(option) for option in choices),
    )


def _pick(options: Sequence[Any], *, fastest: bool) -> int:
    """Index of the best single option of a class (classes are independent without a budget).

    ``fastest``: lowest latency, then highest importance, then fewest changes. Otherwise:
    highest importance (1e-9 ties), then fewest changes, then lowest latency.
    """
    best = 0
    for k in range(1, len(options)):
        new, old = options[k], options[best]
        if fastest:
            wins = (new.latency, -new.importance, _changes(new)) < (
                old.latency,
                -old.importance,
                _changes(old),
            )
        elif new.importance > old.importance + IMPORTANCE_TOL:
            wins = True
        elif new.importance < old.importance - IMPORTANCE_TOL:
            wins = False
        else:
            wins = (_changes(new), new.latency) < (_changes(old), old.latency)
        if wins:
            best = k
    return best


def fastest_plan(classes: Iterable[Iterable[Any]]) -> KnapsackSolution:
    """The minimum-latency plan (exact, no grid): each class's fastest option, ties to higher
    importance, then fewer changes. Its latency is the floor any budget must reach."""
    table = _validate(classes)
    return solution_of(table, [_pick(options, fastest=True) for options in table])


def max_importance_plan(classes: Iterable[Iterable[Any]]) -> KnapsackSolution:
    """The plan an unlimited budget buys: each class's most important option (ties: fewer
    changes, then lower latency)."""
    table = _validate(classes)
    return solution_of(table, [_pick(options, fastest=False) for options in table])


def min_latency(classes: Iterable[Iterable[Any]]) -> float:
    """Smallest latency (ms) any plan reaches: the sum of each class's fastest option."""
    return fastest_plan(classes).latency


def shift_negative(classes: Iterable[Iterable[Any]]) -> tuple[list[list[Option]], float]:
    """Shift each class's latencies so its fastest option costs 0; return them and the shift.

    For latency *changes* (negative for narrower widths): solve the shifted classes with the
    budget ``budget + shift`` (``shift = -sum of each class's minimum``, >= 0 when every row
    has a non-positive entry). Options come back as :class:`Option` with the same importance,
    key and changes. Classes whose minimum is positive are shifted too, which leaves every plan
    ordered the same way.
    """
    shifted: list[list[Option]] = []
    total = 0.0
    for i, options in enumerate(list(o) for o in classes):
        if not options:
            raise ValueError(f"class {i} has no options; every class must offer at least one")
        low = min(option.latency for option in options)
        if not math.isfinite(low):
            raise ValueError(f"class {i} has a non-finite latency")
        total -= low
        shifted.append([Option(o.latency - low, o.importance, o.key, _changes(o)) for o in options])
    return shifted, total


def grid_knapsack(classes: Sequence[Sequence[Any]], grid: Grid) -> list[int] | None:
    """Run the budgeted DP; return the chosen option index of each class, or ``None``.

    ``None`` means no plan fits in ``grid.tau`` steps. ``classes`` must be validated.
    """
    tau = grid.tau
    n = len(classes)
    if (n + 1) * (tau + 1) > MAX_CELLS:
        raise ValueError(
            f"knapsack table of {n} classes x {tau + 1} budget steps is too large; use fewer units"
        )
    value = np.zeros(tau + 1)
    changes = np.zeros(tau + 1, dtype=np.int64)
    latency = np.zeros(tau + 1)
    first = 0  # smallest t at which every class so far has a plan (tau + 1: none)
    pointer = np.full((n, tau + 1), -1, dtype=np.int32)
    steps: list[np.ndarray] = []
    for i, options in enumerate(classes):
        g_all = grid.steps_array(np.array([o.latency for o in options], dtype=np.float64))
        steps.append(g_all)
        new_value = np.full(tau + 1, -np.inf)
        new_changes = np.zeros(tau + 1, dtype=np.int64)
        new_latency = np.full(tau + 1, np.inf)
        new_first = tau + 1
        for k, option in enumerate(options):
            g = int(g_all[k])
            if first + g > tau:
                continue
            # Sources t' in [first, tau - g] feed destinations t = t' + g in [first + g, tau].
            src = slice(first, tau + 1 - g)
            wins = relax(
                (new_value[first + g :], new_changes[first + g :], new_latency[first + g :]),
                (
                    value[src] + option.importance,
                    changes[src] + _changes(option),
                    latency[src] + option.latency,
                ),
            )
            np.copyto(pointer[i, first + g :], np.int32(k), where=wins)
            new_first = min(new_first, first + g)
        if new_first > tau:
            return None
        value, changes, latency, first = new_value, new_changes, new_latency, new_first
    chosen = [0] * n
    t = tau
    for i in range(n - 1, -1, -1):
        k = int(pointer[i, t])
        chosen[i] = k
        t -= int(steps[i][k])
    return chosen


def solve_knapsack(
    classes: Iterable[Iterable[Any]], budget: float, *, units: int = 1000
) -> KnapsackSolution:
    """Most important plan (one option per class) whose latency fits ``budget`` ms.

    Latencies are rounded up to ``budget / units`` steps, so the plan never exceeds the budget
    and is optimal on that grid. Raises :class:`~onnxmerge.solve.InfeasibleBudget` (with
    ``min_latency``, the exact floor) when no plan fits, also when only the rounding keeps the
    fastest plan out; ``ValueError`` for an empty class or a bad latency. ``budget=inf``
    returns :func:`max_importance_plan`. No classes: the empty plan.
    """
    table = _validate(classes)
    floor = fastest_plan(table).latency
    if budget == math.inf:
        return max_importance_plan(table)
    grid = make_grid(budget, units)  # validates budget and units
    if budget < floor:
        raise InfeasibleBudget(budget, floor, units)
    chosen = grid_knapsack(table, grid)
    if chosen is None:
        raise InfeasibleBudget(budget, floor, units)
    return solution_of(table, chosen)
