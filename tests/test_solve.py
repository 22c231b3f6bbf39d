"""Tests of the depth-compression DPs against brute force on small random chains.

Instances use integer latencies, importances on a 1/8 grid and budgets on a 1/4 grid, so sums are
exact in float and ties are real ties: the solvers must then match brute force exactly, including
the tie-break (equal importance -> smaller latency).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxmerge.solve import (
    DepthSolution,
    Entry,
    InfeasibleBudget,
    Method,
    fastest_plan,
    make_grid,
    max_importance_plan,
    min_latency,
    optimal_groups,
    solve,
    solve_depth,
    solve_layermerge,
)

PLAN_LIMIT = 30_000  # layermerge brute force enumerates every plan; keep it small
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- instance generator


def valid_segments(
    length: int, breaks: set[int], residuals: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """(s, e) that straddle no break and are laminar with every residual interval [p, q]."""
    out = []
    for s in range(length):
        for e in range(s + 1, length + 1):
            if any(s < b < e for b in breaks):
                continue
            if any(s < p < e < q or p < s < q < e for p, q in residuals):
                continue
            out.append((s, e))
    return out


def random_residuals(rng: random.Random, length: int) -> list[tuple[int, int]]:
    """A few random intervals, kept only while the family stays laminar."""
    residuals: list[tuple[int, int]] = []
    for _ in range(rng.randint(0, 4)):
        if length < 2:
            break
        p = rng.randint(0, length - 2)
        q = min(length, p + rng.randint(2, 4))
        if all(not (p < a < q < b or a < p < b < q) for a, b in residuals):
            residuals.append((p, q))
    return residuals


def count_plans(length: int, entries: list[Entry]) -> int:
    ways = [1] + [0] * length
    for entry in sorted(entries, key=lambda x: x.end):
        ways[entry.end] += ways[entry.start]
    return ways[length]


def make_instance(seed: int, length: int) -> list[Entry]:
    """Random breaks, laminar residuals, 1-3 entries per valid segment (some pruned)."""
    rng = random.Random(seed)
    breaks = {b for b in range(1, length) if rng.random() < 0.25}
    segments = valid_segments(length, breaks, random_residuals(rng, length))
    menu: dict[tuple[int, int], list[Entry]] = {}
    for s, e in segments:
        variants = []
        for v in range(rng.randint(1, 3)):
            kept = (v == 0 and (e - s == 1 or rng.random() < 0.85)) or rng.random() < 0.2
            variants.append(
                Entry(
                    start=s,
                    end=e,
                    latency=float(rng.randint(0, 12)),
                    importance=-rng.randint(0, 16) / 8,
                    key=(s, e, v),
                    all_kept=kept,
                )
            )
        menu[(s, e)] = variants
    entries = [x for variants in menu.values() for x in variants]
    # Thin the menus (drop last variants, biggest menus first) until brute force is affordable.
    while count_plans(length, entries) > PLAN_LIMIT:
        span = max(menu, key=lambda k: len(menu[k]))
        menu[span].pop()
        entries = [x for variants in menu.values() for x in variants]
    return entries


# --------------------------------------------------------------------------- brute force


def lex_better(imp: float, changes: int, lat: float, best: tuple | None) -> bool:
    """Higher importance, then fewer changes (Entry.change_count), then lower latency."""
    return best is None or (-imp, changes, lat) < (-best[0], best[1], best[2])


def brute_layermerge(
    length: int, entries: list[Entry], budget: float, units: int
) -> tuple[tuple[float, float] | None, float]:
    """(best (importance, changes, latency) within tau or None, min latency) over every plan."""
    grid = make_grid(budget, units)
    by_start: dict[int, list[Entry]] = {}
    for entry in entries:
        by_start.setdefault(entry.start, []).append(entry)

    # plans[p]: (grid steps, importance, changes, latency) of EVERY tiling of (p, L].
    plans: list[list[tuple[int, float, int, float]]] = [[] for _ in range(length + 1)]
    plans[length] = [(0, 0.0, 0, 0.0)]
    for pos in range(length - 1, -1, -1):
        for entry in by_start.get(pos, ()):
            g = grid.steps(entry.latency)
            plans[pos].extend(
                (
                    g + g_rest,
                    entry.importance + imp_rest,
                    entry.change_count + ch_rest,
                    entry.latency + lat_rest,
                )
                for g_rest, imp_rest, ch_rest, lat_rest in plans[entry.end]
            )

    best = None
    fastest = math.inf
    for g, imp, changes, lat in plans[0]:
        fastest = min(fastest, lat)
        if g <= grid.tau and lex_better(imp, changes, lat, best):
            best = (imp, changes, lat)
    return best, fastest


def brute_kept(entries: list[Entry]) -> dict[tuple[int, int], Entry]:
    """Per segment, the fastest all-kept entry (ties: higher importance, then first listed)."""
    table: dict[tuple[int, int], Entry] = {}
    for entry in entries:
        span = (entry.start, entry.end)
        if entry.all_kept and (
            span not in table
            or (entry.latency, -entry.importance) < (table[span].latency, -table[span].importance)
        ):
            table[span] = entry
    return table


def brute_partition(span: tuple[int, int], kept: dict[tuple[int, int], Entry]) -> float:
    """Fastest tiling of an activation-free span, by trying every subset of interior cuts."""
    s, e = span
    best = math.inf
    interior = range(s + 1, e)
    for r in range(len(interior) + 1):
        for cuts in combinations(interior, r):
            points = [s, *cuts, e]
            pieces = list(zip(points, points[1:], strict=False))
            if all(p in kept for p in pieces):
                best = min(best, sum(kept[p].latency for p in pieces))
    return best


def brute_depth(
    length: int, entries: list[Entry], budget: float, units: int
) -> tuple[tuple[float, float] | None, float, dict[tuple[int, int], float]]:
    """Every activation subset x every merge partition; returns best, min latency, span T_opt."""
    grid = make_grid(budget, units)
    kept = brute_kept(entries)
    t_opt = {span: brute_partition(span, kept) for span in kept}
    best = None
    fastest = math.inf
    for r in range(length):
        for cuts in combinations(range(1, length), r):
            points = [0, *cuts, length]
            spans = list(zip(points, points[1:], strict=False))
            if not all(span in kept for span in spans):
                continue
            g = sum(grid.steps(t_opt[span]) for span in spans)
            imp = sum(kept[span].importance for span in spans)
            changes = sum(e - s - 1 for s, e in spans)  # activations removed
            lat = sum(t_opt[span] for span in spans)
            fastest = min(fastest, lat)
            if g <= grid.tau and lex_better(imp, changes, lat, best):
                best = (imp, changes, lat)
    return best, fastest, t_opt


# --------------------------------------------------------------------------- checks


def assert_tiles(length: int, segments: list[Entry]) -> None:
    assert segments[0].start == 0
    assert segments[-1].end == length
    for left, right in zip(segments, segments[1:], strict=False):
        assert left.end == right.start


instance = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(1, 12),  # length
    st.integers(0, 4 * 70),  # budget in quarter ms
    st.sampled_from([1, 2, 3, 7, 20, 50, 1000]),  # units
)


@SETTINGS
@given(instance)
def test_layermerge_matches_brute_force(case: tuple[int, int, int, int]) -> None:
    seed, length, quarters, units = case
    budget = quarters / 4
    entries = make_instance(seed, length)
    best, fastest = brute_layermerge(length, entries, budget, units)
    if best is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve_layermerge(length, entries, budget, units=units)
        assert info.value.min_latency == fastest
        assert "\n" not in str(info.value)
        return
    sol = solve_layermerge(length, entries, budget, units=units)
    assert_tiles(length, sol.segments)
    assert all(seg in entries for seg in sol.segments)
    grid = make_grid(budget, units)
    assert sum(grid.steps(seg.latency) for seg in sol.segments) <= grid.tau
    assert sol.latency <= budget
    assert sol.latency == sum(seg.latency for seg in sol.segments)
    assert sol.boundaries == [seg.end for seg in sol.segments]
    assert abs(sol.importance - best[0]) <= 1e-9
    # tie-break: fewest changes, then smallest latency among the most important
    assert abs(sol.latency - best[2]) <= 1e-9


@SETTINGS
@given(instance)
def test_depth_matches_brute_force(case: tuple[int, int, int, int]) -> None:
    seed, length, quarters, units = case
    budget = quarters / 4
    entries = make_instance(seed, length)
    best, fastest, t_opt = brute_depth(length, entries, budget, units)
    if best is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve_depth(length, entries, budget, units=units)
        assert info.value.min_latency == fastest
        return
    sol = solve_depth(length, entries, budget, units=units)
    assert isinstance(sol, DepthSolution)
    assert_tiles(length, sol.spans)
    assert_tiles(length, sol.segments)
    assert sol.segments == [piece for group in sol.groups for piece in group]
    assert sol.boundaries == [span.end for span in sol.spans]
    kept = brute_kept(entries)
    grid = make_grid(budget, units)
    g_total = 0
    for span, group in zip(sol.spans, sol.groups, strict=True):
        assert span.all_kept and span in entries
        assert span == kept[(span.start, span.end)]
        assert_tiles(span.end - span.start, [shift(p, span.start) for p in group])
        assert all(piece.all_kept and piece in entries for piece in group)
        span_latency = sum(piece.latency for piece in group)
        assert span_latency == t_opt[(span.start, span.end)]  # stage 1 found the fastest tiling
        g_total += grid.steps(span_latency)
    assert g_total <= grid.tau
    assert sol.latency <= budget
    assert abs(sol.importance - best[0]) <= 1e-9
    assert abs(sol.latency - best[2]) <= 1e-9


def shift(entry: Entry, offset: int) -> Entry:
    return Entry(entry.start - offset, entry.end - offset, entry.latency, entry.importance)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.floats(0.0, 80.0, allow_nan=False),
    st.sampled_from(["layermerge", "depth"]),
)
def test_float_budgets_never_overshoot(
    seed: int, length: int, budget: float, method: Method
) -> None:
    rng = random.Random(seed)
    entries = [
        Entry(x.start, x.end, x.latency * rng.uniform(0.5, 1.5), x.importance, x.key, x.all_kept)
        for x in make_instance(seed, length)
    ]
    try:
        sol = solve(length, entries, budget, method=method, units=97)
    except InfeasibleBudget as error:
        assert error.min_latency == pytest.approx(min_latency(length, entries, method))
        return
    assert sol.latency <= budget * (1 + 1e-9)


# --------------------------------------------------------------------------- fixed examples


def chain(length: int, latency: float = 1.0, importance: float = 0.0) -> list[Entry]:
    return [Entry(i, i + 1, latency, importance, key=i) for i in range(length)]


@pytest.mark.parametrize("method", ["layermerge", "depth"])
def test_infeasible_budget_reports_min_latency(method: Method) -> None:
    entries = [*chain(4, 2.0), Entry(0, 2, 3.0, -1.0), Entry(2, 4, 1.5, -1.0)]
    assert min_latency(4, entries, method) == 4.5
    with pytest.raises(InfeasibleBudget) as info:
        solve(4, entries, 4.0, method=method)
    assert info.value.min_latency == 4.5
    assert isinstance(info.value, ValueError)
    assert "4.5" in str(info.value) and "\n" not in str(info.value)


def test_rounding_can_make_a_tight_budget_infeasible() -> None:
    entries = chain(2, 0.5)  # 1.0 ms exactly, but each 0.5 ms rounds up to 2 of 3 units
    with pytest.raises(InfeasibleBudget, match="units") as info:
        solve_layermerge(2, entries, 1.0, units=3)
    assert info.value.min_latency == 1.0
    assert solve_layermerge(2, entries, 1.0, units=4).latency == 1.0


@pytest.mark.parametrize("method", ["layermerge", "depth"])
@pytest.mark.parametrize("seed", range(5))
def test_huge_budget_returns_max_importance_plan(method: Method, seed: int) -> None:
    length = 10
    entries = make_instance(seed, length)
    best = max_importance_plan(length, entries, method)
    for budget in (1e9, math.inf):
        sol = solve(length, entries, budget, method=method)
        assert sol.importance == best.importance  # exact: importances are multiples of 1/8
        assert sol.latency == best.latency  # same tie-break (plans themselves may tie)
    # Unchanged singles (importance 0) beat every merge (importance < 0).
    entries = [*chain(length, 5.0, 0.0), Entry(0, 3, 1.0, -0.5), Entry(4, 6, 1.0, -0.1)]
    sol = solve(length, entries, 1e9, method=method)
    assert sol.boundaries == list(range(1, length + 1))
    assert sol.importance == 0.0


@pytest.mark.parametrize("method", ["layermerge", "depth"])
def test_equal_importance_prefers_lower_latency(method: Method) -> None:
    entries = [Entry(0, 1, 3.0, -1.0, key="slow"), Entry(0, 1, 2.0, -1.0, key="fast")]
    entries += [Entry(1, 2, 1.0, 0.0), Entry(0, 2, 4.0, -1.0, key="merged")]
    sol = solve(2, entries, 100.0, method=method)
    assert [seg.key for seg in sol.segments] == ["fast", None]
    assert sol.latency == 3.0


def test_layermerge_uses_pruned_variants() -> None:
    entries = [*chain(3, 4.0), Entry(0, 3, 9.0, -0.2, key="all")]
    entries.append(Entry(0, 3, 2.0, -0.3, key="pruned", all_kept=False))
    assert [s.key for s in solve_layermerge(3, entries, 10.0).segments] == ["all"]
    assert [s.key for s in solve_layermerge(3, entries, 5.0).segments] == ["pruned"]
    # The depth method ignores the pruned variant: (0, 3] costs 9 ms, three singles 12 ms.
    assert fastest_plan(3, entries, "depth").latency == 9.0
    with pytest.raises(InfeasibleBudget):
        solve_depth(3, entries, 5.0)


def test_depth_stage1_split_is_strictly_faster() -> None:
    # Merging all of (0, 3] into one conv is slow (10 ms), but the span may stay activation-free
    # and run as three linear convs (3 ms); importance of the span is that of entry (0, 3).
    entries = [*chain(3, 1.0, -1.0), Entry(0, 3, 10.0, -0.1, key="span")]
    entries += [Entry(0, 2, 5.0, -0.5), Entry(1, 3, 5.0, -0.5)]
    assert [(p.start, p.end) for p in optimal_groups(3, entries)[(0, 3)]] == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    sol = solve_depth(3, entries, 4.0)
    assert sol.boundaries == [3]
    assert sol.merge_boundaries == [1, 2, 3]
    assert [s.key for s in sol.spans] == ["span"]
    assert [[p.key for p in group] for group in sol.groups] == [[0, 1, 2]]
    assert sol.latency == 3.0 and sol.importance == -0.1
    # LayerMerge has no such split: the one-conv (0, 3] costs 10 ms, so it keeps the singles.
    assert solve_layermerge(3, entries, 4.0).importance == -3.0


def test_depth_stage1_tiles_through_invalid_prefixes() -> None:
    # Residual [2, 5]: (0, 3) and (0, 4) cross it and are invalid, yet 0-2-3-5 tiles (0, 5].
    entries = [
        Entry(0, 5, 100.0, 0.0),
        Entry(0, 1, 50.0, 0.0),
        Entry(1, 2, 50.0, 0.0),
        Entry(0, 2, 1.0, 0.0),
        Entry(2, 3, 1.0, 0.0),
        Entry(3, 4, 50.0, 0.0),
        Entry(4, 5, 50.0, 0.0),
        Entry(3, 5, 1.0, 0.0),
        Entry(2, 5, 100.0, 0.0),
        Entry(2, 4, 50.0, 0.0),
    ]
    groups = optimal_groups(5, entries)
    assert [(p.start, p.end) for p in groups[(0, 5)]] == [(0, 2), (2, 3), (3, 5)]
    assert [(p.start, p.end) for p in groups[(2, 5)]] == [(2, 3), (3, 5)]


def test_depth_takes_fastest_all_kept_entry_per_segment() -> None:
    entries = [Entry(0, 1, 5.0, -0.1, key="a"), Entry(0, 1, 2.0, -0.9, key="b")]
    entries.append(Entry(0, 1, 1.0, 0.0, key="pruned", all_kept=False))
    sol = solve_depth(1, entries, 10.0)
    assert [s.key for s in sol.segments] == ["b"]
    assert solve_layermerge(1, entries, 10.0).segments[0].key == "pruned"


def test_zero_budget_needs_zero_latency_plan() -> None:
    assert solve_layermerge(2, chain(2, 0.0), 0.0).latency == 0.0
    with pytest.raises(InfeasibleBudget):
        solve_layermerge(2, chain(2, 0.5), 0.0)
    with pytest.raises(InfeasibleBudget):
        solve_layermerge(2, chain(2, 0.5), -1.0)


def test_bad_inputs_are_value_errors_not_infeasible() -> None:
    with pytest.raises(ValueError, match="tile"):
        solve_layermerge(3, [Entry(0, 1, 1.0, 0.0), Entry(2, 3, 1.0, 0.0)], 10.0)
    with pytest.raises(ValueError, match="tile"):  # depth sees no all-kept (1, 2]
        solve_depth(2, [*chain(1), Entry(1, 2, 1.0, 0.0, all_kept=False)], 10.0)
    with pytest.raises(ValueError, match="outside"):
        solve_layermerge(2, [Entry(0, 3, 1.0, 0.0)], 10.0)
    with pytest.raises(ValueError, match="latency"):
        solve_layermerge(1, [Entry(0, 1, -1.0, 0.0)], 10.0)
    with pytest.raises(ValueError, match="units"):
        solve_layermerge(1, chain(1), 10.0, units=0)
    with pytest.raises(ValueError, match="method"):
        min_latency(1, chain(1), "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        solve_layermerge(1, chain(1), math.nan)


def test_grid_rounds_up_and_snaps_tau() -> None:
    grid = make_grid(0.3, 3)
    assert grid.tau == 3
    assert grid.steps(0.1) == 1  # 0.1 / unit is 1.0000000000000002: noise, not a second unit
    assert grid.steps(0.0) == 0 and grid.steps(0.1001) == 2 and grid.steps(0.2999) == 3
    assert make_grid(1.0, 1000).tau == 1000


def test_solvers_do_not_import_onnx() -> None:
    code = (
        "import sys, onnxmerge.solve; assert not [m for m in sys.modules if m.startswith('onnx.')]"
    )
    code += "; assert 'onnx' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
