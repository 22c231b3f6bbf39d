"""Two-stage dynamic program of Kim et al. (ICML 2023), on a latency grid.

Only entries that keep every conv (``all_kept``) take part, one per segment: the fastest (ties
to the higher importance). Write ``T(s, e)`` for its latency and ``I(s, e)`` for its importance.

Stage 1: the fastest way to realise an activation-free span ``(s, e]`` as a sequence of merged
convs (the "merge groups")::

    P(s, s) = 0
    P(s, e) = min over valid pieces (k, e) with s <= k < e of  P(s, k) + T(k, e)
    T_opt(s, e) = P(s, e)                      for every valid span (s, e)

This is K23's ``T_opt(s,e) = min(T(s,e), min_k T_opt(s,k) + T(k,e))`` generalised so the prefix
``(s, k]`` need not itself be a valid segment: K23 misses tilings such as 0-2-3-5 inside a span
(0, 5] that contains the residual [2, 5]. Both agree whenever every prefix is valid. Ties keep
the direct merge (fewer groups); a split must be strictly faster.

Stage 2: the budgeted DP of :mod:`onnxmerge.solve.layermerge` over spans, with
``g_opt = ceil(T_opt / unit)``::

    D[t, 0] = 0                                for all 0 <= t <= tau
    D[t, m] = max over valid spans (i, m) with g_opt(i, m) <= t of  D[t - g_opt(i, m), i] + I(i, m)

An activation is kept at every span end; inside a span the merge groups are joined linearly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from onnxmerge.solve.entries import (
    DepthSolution,
    Entry,
    InfeasibleBudget,
    exact_path,
    make_grid,
    no_cover_error,
    validate_entries,
)
from onnxmerge.solve.layermerge import grid_dp

__all__ = [
    "fastest_plan",
    "kept_entries",
    "max_importance_plan",
    "optimal_groups",
    "solve_depth",
]


def kept_entries(entries: Iterable[Entry]) -> dict[tuple[int, int], Entry]:
    """The one all-kept entry per segment the depth method uses: fastest, then most important."""
    table: dict[tuple[int, int], Entry] = {}
    for entry in entries:
        if not entry.all_kept:
            continue
        span = (entry.start, entry.end)
        best = table.get(span)
        if (
            best is None
            or entry.latency < best.latency
            or (entry.latency == best.latency and entry.importance > best.importance)
        ):
            table[span] = entry
    return table


def optimal_groups(length: int, entries: Iterable[Entry]) -> dict[tuple[int, int], list[Entry]]:
    """Stage 1: for every valid span, its fastest tiling into merge groups (entries in order)."""
    table = kept_entries(validate_entries(length, entries))
    by_end: dict[int, list[Entry]] = {}
    for entry in sorted(table.values(), key=lambda x: (x.end, x.start)):
        by_end.setdefault(entry.end, []).append(entry)
    reach: dict[int, int] = {}
    for start, end in table:
        reach[start] = max(reach.get(start, start), end)
    groups: dict[tuple[int, int], list[Entry]] = {}
    for start, last in reach.items():
        best: dict[int, float] = {start: 0.0}
        piece: dict[int, Entry] = {}
        for end in range(start + 1, last + 1):
            for entry in by_end.get(end, ()):
                # Pieces come by ascending start, so k == start (the direct merge) is tried first.
                if entry.start < start or entry.start not in best:
                    continue
                candidate = best[entry.start] + entry.latency
                current = best.get(end)
                if current is None or candidate < current - 1e-12 * max(1.0, current):
                    best[end] = candidate
                    piece[end] = entry
        for end in range(start + 1, last + 1):
            if (start, end) not in table:
                continue
            chain: list[Entry] = []
            position = end
            while position > start:
                chain.append(piece[position])
                position = piece[position].start
            chain.reverse()
            groups[(start, end)] = chain
    return groups


def _span_entries(
    length: int, entries: Iterable[Entry]
) -> tuple[list[Entry], dict[tuple[int, int], list[Entry]], dict[tuple[int, int], Entry]]:
    """Stage-2 candidates: one per valid span, latency T_opt, importance of the span entry."""
    validated = validate_entries(length, entries)
    table = kept_entries(validated)
    groups = optimal_groups(length, validated)
    spans = [
        Entry(
            start=span[0],
            end=span[1],
            latency=sum(entry.latency for entry in groups[span]),
            importance=table[span].importance,
            key=span,
        )
        for span in sorted(groups, key=lambda x: (x[1], x[0]))
    ]
    return spans, groups, table


def _solution(
    spans: Sequence[Entry],
    chosen: Sequence[int],
    groups: dict[tuple[int, int], list[Entry]],
    table: dict[tuple[int, int], Entry],
) -> DepthSolution:
    span_keys = [(spans[i].start, spans[i].end) for i in chosen]
    chosen_groups = [list(groups[key]) for key in span_keys]
    segments = [entry for group in chosen_groups for entry in group]
    span_entries = [table[key] for key in span_keys]
    return DepthSolution(
        segments=segments,
        latency=sum(entry.latency for entry in segments),
        importance=sum(entry.importance for entry in span_entries),
        groups=chosen_groups,
        spans=span_entries,
    )


def fastest_plan(length: int, entries: Iterable[Entry]) -> DepthSolution:
    """The minimum-latency depth plan (ties: higher importance), exact, with no budget."""
    spans, groups, table = _span_entries(length, entries)
    chosen = exact_path(length, spans, fastest=True)
    if chosen is None:
        raise no_cover_error(length)
    return _solution(spans, chosen, groups, table)


def max_importance_plan(length: int, entries: Iterable[Entry]) -> DepthSolution:
    """The depth plan an unlimited budget buys: maximum importance, ties to lower latency."""
    spans, groups, table = _span_entries(length, entries)
    chosen = exact_path(length, spans, fastest=False)
    if chosen is None:
        raise no_cover_error(length)
    return _solution(spans, chosen, groups, table)


def solve_depth(
    length: int, entries: Iterable[Entry], budget: float, *, units: int = 1000
) -> DepthSolution:
    """Best K23 plan whose latency fits ``budget`` ms, on a grid of ``units`` steps.

    Raises :class:`InfeasibleBudget` (with ``min_latency``) when no plan fits, and ``ValueError``
    when the all-kept entries cannot tile ``(0, length]``. ``budget=inf`` returns
    :func:`max_importance_plan`.
    """
    spans, groups, table = _span_entries(length, entries)
    fastest = exact_path(length, spans, fastest=True)
    if fastest is None:
        raise no_cover_error(length)
    min_latency = _solution(spans, fastest, groups, table).latency
    if budget == math.inf:
        chosen = exact_path(length, spans, fastest=False)
        assert chosen is not None  # a tiling exists, so a best one does
        return _solution(spans, chosen, groups, table)
    if budget < min_latency:
        raise InfeasibleBudget(budget, min_latency, units)
    chosen = grid_dp(length, spans, make_grid(budget, units))
    if chosen is None:
        raise InfeasibleBudget(budget, min_latency, units)
    return _solution(spans, chosen, groups, table)
