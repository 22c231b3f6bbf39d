"""One-stage dynamic program of LayerMerge (Kim et al., ICML 2024), on a latency grid.

Every segment between two consecutive boundaries becomes exactly one conv, chosen from the
segment's menu of entries (all convs kept, or a pruned variant). An activation is kept at every
boundary. With ``g = ceil(latency / unit)`` and ``tau = floor(budget / unit)`` (see ``table``)::

    M[t, 0] = 0                                   for all 0 <= t <= tau
    M[t, e] = max over entries (s, e, k) with g(k) <= t of  M[t - g(k), s] + I(k)

``M[t, e]`` is the best summed importance of a tiling of ``(0, e]`` whose grid latency is at most
``t``; the answer is ``M[tau, L]``. Ties within 1e-9 in importance go to the plan with the fewest
changes (removed activations and pruned convs, Entry.changes), then to the smaller exact latency:
the least change that fits the budget (with every importance ~0, as a saturated output scores
them, "smallest latency" alone picks the fastest plan: a 1.5x request measured 4.2x). The DP
carries changes and latency alongside; lexicographic order is preserved by adding the same entry,
so the DP stays exact under it. Each relaxation is one vectorised numpy step over all ``t``,
so the cost is O(entries * tau) numpy work and O(L * tau) memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from onnxmerge.solve.entries import (
    MAX_CELLS,
    Entry,
    Grid,
    InfeasibleBudget,
    Solution,
    exact_path,
    make_grid,
    no_cover_error,
    relax,
    validate_entries,
)

__all__ = ["fastest_plan", "grid_dp", "max_importance_plan", "solve_layermerge"]


def grid_dp(length: int, entries: Sequence[Entry], grid: Grid) -> list[int] | None:
    """Run the budgeted DP; return indices of the chosen entries in order, or ``None``.

    ``None`` means no tiling fits in ``grid.tau`` steps. Shared with the depth solver, whose
    stage 2 is this same DP over activation-free spans.
    """
    tau = grid.tau
    if (length + 1) * (tau + 1) > MAX_CELLS:
        raise ValueError(
            f"DP table of {length + 1} positions x {tau + 1} budget steps is too large; "
            f"use fewer units"
        )
    steps = grid.steps_array(np.array([entry.latency for entry in entries], dtype=np.float64))
    value = np.full((length + 1, tau + 1), -np.inf)
    changes = np.zeros((length + 1, tau + 1), dtype=np.int64)
    latency = np.full((length + 1, tau + 1), np.inf)
    pointer = np.full((length + 1, tau + 1), -1, dtype=np.int32)
    value[0] = 0.0
    latency[0] = 0.0
    # first[p]: smallest t at which position p is reachable (tau + 1 when it is not).
    first = np.full(length + 1, tau + 1, dtype=np.int64)
    first[0] = 0
    order = sorted(range(len(entries)), key=lambda i: (entries[i].end, entries[i].start))
    for index in order:
        entry = entries[index]
        g = int(steps[index])
        low = int(first[entry.start])
        if low + g > tau:
            continue
        # Sources t' in [low, tau - g] feed destinations t = t' + g in [low + g, tau].
        src, dst = (entry.start, slice(low, tau + 1 - g)), (entry.end, slice(low + g, None))
        wins = relax(
            (value[dst], changes[dst], latency[dst]),
            (
                value[src] + entry.importance,
                changes[src] + entry.change_count,
                latency[src] + entry.latency,
            ),
        )
        np.copyto(pointer[entry.end, low + g :], np.int32(index), where=wins)
        first[entry.end] = min(first[entry.end], low + g)
    if pointer[length, tau] < 0:
        return None
    chosen: list[int] = []
    position, t = length, tau
    while position > 0:
        index = int(pointer[position, t])
        chosen.append(index)
        t -= int(steps[index])
        position = entries[index].start
    chosen.reverse()
    return chosen


def _solution(entries: Sequence[Entry], chosen: Sequence[int]) -> Solution:
    segments = [entries[i] for i in chosen]
    return Solution(
        segments=segments,
        latency=sum(entry.latency for entry in segments),
        importance=sum(entry.importance for entry in segments),
    )


def fastest_plan(length: int, entries: Iterable[Entry]) -> Solution:
    """The minimum-latency plan (ties: higher importance), exact, with no budget."""
    table = validate_entries(length, entries)
    chosen = exact_path(length, table, fastest=True)
    if chosen is None:
        raise no_cover_error(length)
    return _solution(table, chosen)


def max_importance_plan(length: int, entries: Iterable[Entry]) -> Solution:
    """The plan an unlimited budget buys: maximum importance, ties to lower latency."""
    table = validate_entries(length, entries)
    chosen = exact_path(length, table, fastest=False)
    if chosen is None:
        raise no_cover_error(length)
    return _solution(table, chosen)


def solve_layermerge(
    length: int, entries: Iterable[Entry], budget: float, *, units: int = 1000
) -> Solution:
    """Best plan whose latency fits ``budget`` ms, on a grid of ``units`` steps.

    Raises :class:`InfeasibleBudget` (with ``min_latency``) when no plan fits, and ``ValueError``
    when the entries cannot tile ``(0, length]``. ``budget=inf`` returns
    :func:`max_importance_plan`.
    """
    table = validate_entries(length, entries)
    fastest = exact_path(length, table, fastest=True)
    if fastest is None:
        raise no_cover_error(length)
    min_latency = _solution(table, fastest).latency
    if budget == math.inf:
        return max_importance_plan(length, table)
    if budget < min_latency:
        raise InfeasibleBudget(budget, min_latency, units)
    chosen = grid_dp(length, table, make_grid(budget, units))
    if chosen is None:
        raise InfeasibleBudget(budget, min_latency, units)
    return _solution(table, chosen)
