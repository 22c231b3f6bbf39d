"""The multiple-choice knapsack (solve/knapsack.py) against brute force on small random instances.

Brute force enumerates every plan (one option per class) and keeps those whose *grid* latency
(each option rounded up to budget / units) fits tau: the DP must find the best of them, never
exceed the budget, and raise InfeasibleBudget exactly when none fits. Importances are integers
or on a 1/8 grid so ties are real ties and the tie-break (fewer changes, then lower latency) is
checked exactly.
"""

from __future__ import annotations

import math
import random
import time
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxmerge.solve import (
    Entry,
    InfeasibleBudget,
    KnapsackSolution,
    Option,
    knapsack_fastest_plan,
    make_grid,
    shift_negative,
    solve_knapsack,
)
from onnxmerge.solve.knapsack import max_importance_plan, min_latency

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute(classes: list[list[Option]], budget: float, units: int) -> tuple | None:
    """Best (importance, -changes, -latency) over plans that fit the grid; None if none."""
    grid = make_grid(budget, units)
    best = None
    for plan in product(*classes):
        if sum(grid.steps(o.latency) for o in plan) > grid.tau:
            continue
        score = (
            sum(o.importance for o in plan),
            -sum(o.changes for o in plan),
            -sum(o.latency for o in plan),
        )
        if best is None or score > best:
            best = score
    return best


def solve(classes: list, budget: float) -> KnapsackSolution:
    """Hand-made cases: latencies and budgets on a 1/4 grid, units of 1/4 so nothing rounds."""
    return solve_knapsack(classes, budget, units=max(1, round(budget * 4)))


options = st.builds(
    Option,
    latency=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.75]),
    importance=st.integers(-6, 0).map(lambda i: i / 8),
    key=st.none(),
    changes=st.integers(0, 2),
)
instances = st.tuples(
    st.lists(st.lists(options, min_size=1, max_size=4), min_size=0, max_size=5),
    st.integers(0, 60).map(lambda b: b / 4),
    st.sampled_from([1, 3, 7, 16, 100, 1000]),
)


@SETTINGS
@given(instances)
def test_matches_brute_force_on_the_grid(case: tuple) -> None:
    classes, budget, units = case
    classes = [[Option(o.latency, o.importance, (i, k), o.changes) for k, o in enumerate(c)]
               for i, c in enumerate(classes)]  # fmt: skip
    want = brute(classes, budget, units)
    floor = sum(min(o.latency for o in c) for c in classes)
    if want is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve_knapsack(classes, budget, units=units)
        assert info.value.min_latency == pytest.approx(floor)
        assert info.value.budget == budget
        return
    sol = solve_knapsack(classes, budget, units=units)
    assert isinstance(sol, KnapsackSolution)
    assert len(sol.choices) == len(classes) == len(sol.indices)
    for i, (choice, k) in enumerate(zip(sol.choices, sol.indices, strict=True)):
        assert choice is classes[i][k] and sol.keys[i] == (i, k)
    assert sol.latency <= budget + 1e-12
    grid = make_grid(budget, units)
    assert sum(grid.steps(o.latency) for o in sol.choices) <= grid.tau
    assert sol.importance == pytest.approx(sum(o.importance for o in sol.choices))
    assert (sol.importance, -sol.changes, -sol.latency) == pytest.approx(want)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.floats(0, 3, allow_subnormal=False), st.floats(-2, 0)),
            min_size=1,
            max_size=4,
        ),
        max_size=5,
    ),
    st.floats(0, 12, allow_subnormal=False),
    st.sampled_from([5, 50, 1000]),
)
def test_float_instances_never_overshoot(rows: list, budget: float, units: int) -> None:
    classes = [[Option(lat, imp, k) for k, (lat, imp) in enumerate(row)] for row in rows]
    floor = min_latency(classes)
    want = brute(classes, budget, units)
    try:
        sol = solve_knapsack(classes, budget, units=units)
    except InfeasibleBudget as e:
        # The grid snaps within 1e-9 of a unit, so it may admit a plan a hair over the budget;
        # the exact floor check refuses those.
        assert want is None or budget < floor
        assert e.min_latency == pytest.approx(floor)
        return
    assert want is not None and sol.importance >= want[0] - 1e-9
    # Never over budget, up to the grid's documented snap of 1e-9 of a unit per option.
    assert sol.latency <= budget + 1e-9 * make_grid(budget, units).unit * len(classes)


def test_ties_go_to_fewer_changes_then_lower_latency() -> None:
    # Equal importance: the option with fewer changes wins even though it is slower.
    c = [Option(2.0, -1.0, "slow-few", changes=0), Option(1.0, -1.0, "fast-many", changes=3)]
    assert solve([c], 10.0).keys == ["slow-few"]
    # Equal importance and changes: the faster one.
    c = [Option(2.0, -1.0, "slow"), Option(1.0, -1.0, "fast")]
    assert solve([c], 10.0).keys == ["fast"]
    # Importance within 1e-9 is a tie too.
    c = [Option(1.0, -1.0, "fast"), Option(2.0, -1.0 + 1e-12, "slow")]
    assert solve([c], 10.0).keys == ["fast"]
    # A real importance gain beats both.
    c = [Option(1.0, -1.0, "fast"), Option(2.0, -0.5, "better", changes=5)]
    assert solve([c], 10.0).keys == ["better"]
    # Ties across classes: same total importance, fewer total changes wins.
    a = [Option(1.0, 0.0, "a0", 1), Option(2.0, -1.0, "a1", 0)]
    b = [Option(1.0, -1.0, "b0", 1), Option(2.0, 0.0, "b1", 0)]
    assert solve([a, b], 3.0).keys == ["a0", "b1"]


def test_budget_trade_off_and_infeasible() -> None:
    widths = [Option(4.0, 0.0, 64), Option(3.0, -0.1, 48), Option(2.0, -0.5, 32)]
    other = [Option(2.0, 0.0, 32), Option(1.0, -0.2, 16)]
    assert solve([widths, other], 6.0).keys == [64, 32]
    assert solve([widths, other], 5.0).keys == [48, 32]
    assert solve([widths, other], 4.0).keys == [48, 16]
    assert solve([widths, other], 3.0).keys == [32, 16]
    with pytest.raises(InfeasibleBudget, match="at least") as info:
        solve([widths, other], 2.9)
    assert info.value.min_latency == 3.0
    assert min_latency([widths, other]) == 3.0
    fast = knapsack_fastest_plan([widths, other])
    assert fast.keys == [32, 16] and fast.latency == 3.0
    assert max_importance_plan([widths, other]).keys == [64, 32]
    assert solve_knapsack([widths, other], math.inf).keys == [64, 32]


def test_rounding_can_make_a_tight_budget_infeasible() -> None:
    # Each 1.0 rounds up to 2 units of 0.6: three need 6 > tau = 5.
    classes = [[Option(1.0, 0.0)]] * 3
    with pytest.raises(InfeasibleBudget, match="rounding") as info:
        solve_knapsack(classes, 3.0, units=5)
    assert info.value.min_latency == 3.0
    assert solve_knapsack(classes, 3.0, units=3).latency == 3.0  # exact units fit


def test_zero_budget_and_empty_inputs() -> None:
    free = [Option(0.0, -1.0, "free"), Option(1.0, 0.0, "paid")]
    assert solve([free], 0.0).keys == ["free"]
    with pytest.raises(InfeasibleBudget):
        solve([[Option(1.0, 0.0)]], 0.0)
    empty = solve([], 1.0)
    assert (empty.choices, empty.latency, empty.importance) == ([], 0.0, 0.0)
    assert knapsack_fastest_plan([]).latency == 0.0


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="no options"):
        solve_knapsack([[Option(1.0, 0.0)], []], 5.0)
    with pytest.raises(ValueError, match="shift_negative"):
        solve_knapsack([[Option(-1.0, 0.0)]], 5.0)
    with pytest.raises(ValueError, match="non-finite"):
        solve_knapsack([[Option(1.0, math.nan)]], 5.0)
    for budget in (-1.0, math.nan):
        with pytest.raises(ValueError) as info:
            solve_knapsack([[Option(1.0, 0.0)]], budget)
        assert not isinstance(info.value, InfeasibleBudget)
    with pytest.raises(ValueError, match="units"):
        solve_knapsack([[Option(1.0, 0.0)]], 5.0, units=0)


def test_entries_are_accepted_as_options() -> None:
    classes = [
        [Entry(0, 1, 2.0, 0.0, "keep"), Entry(0, 1, 1.0, -1.0, "cut", changes=1)],
        [Entry(1, 2, 1.0, 0.0, "only")],
    ]
    assert solve(classes, 3.0).keys == ["keep", "only"]
    sol = solve(classes, 2.0)
    assert sol.keys == ["cut", "only"] and sol.changes == 1


def test_shift_negative_latency_changes() -> None:
    # Latency *changes* of narrower widths are negative; shift rows, add the shift to the budget.
    rows = [
        [Option(0.0, 0.0, 64), Option(-1.0, -0.1, 48), Option(-2.0, -0.5, 32)],
        [Option(0.0, 0.0, 32), Option(-1.0, -0.2, 16)],
    ]
    shifted, shift = shift_negative(rows)
    assert shift == 3.0
    assert [[o.latency for o in c] for c in shifted] == [[2.0, 1.0, 0.0], [1.0, 0.0]]
    # Save at least 2 ms of a 10 ms network: budget 8 - 10 = -2 change, shifted +3.
    sol = solve(shifted, -2.0 + shift)
    assert sol.keys == [48, 16]
    assert sol.latency - shift == -2.0
    with pytest.raises(ValueError, match="no options"):
        shift_negative([[]])


def test_forty_classes_of_eight_options_run_fast() -> None:
    """The ResNet-50-sized case: 40 groups x 8 widths at 1000 units (milliseconds in numpy)."""
    rng = random.Random(0)
    classes = []
    for g in range(40):
        full = 64 * rng.randint(1, 8)
        widths = [full * (8 - j) // 8 for j in range(8)]
        classes.append(
            [Option(0.01 * w, -(((full - w) / full) ** 2) * rng.random(), (g, w)) for w in widths]
        )
    top = sum(c[0].latency for c in classes)
    start = time.perf_counter()
    sol = solve_knapsack(classes, 0.6 * top)
    elapsed = time.perf_counter() - start
    assert sol.latency <= 0.6 * top and len(sol.keys) == 40
    assert elapsed < 5.0  # generous: ~10 ms on one core; only catches a non-vectorised DP
    # More budget never buys less importance.
    assert solve_knapsack(classes, 0.8 * top).importance >= sol.importance - 1e-12
    # Rounding up costs at most a unit per class: with 40 units of slack every width is kept.
    assert np.isclose(solve_knapsack(classes, top * 1.04).importance, 0.0)
