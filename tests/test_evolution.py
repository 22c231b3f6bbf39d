"""solve/evolution.py: the LACP-style refinement stays feasible, never scores below its seed,
and finds what an additive surrogate misses when the fitness has interactions."""

from __future__ import annotations

from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge.solve import Option, solve_knapsack
from onnxmerge.solve.evolution import evolve


def _classes(rows):
    return [
        [Option(lat, imp, (i, k)) for k, (lat, imp) in enumerate(r)] for i, r in enumerate(rows)
    ]


def _latency(classes, idx):
    return sum(c[k].latency for c, k in zip(classes, idx, strict=True))


rows = st.lists(
    st.lists(st.tuples(st.floats(0.1, 5.0), st.floats(-3.0, 0.0)), min_size=1, max_size=4),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(rows=rows, slack=st.floats(0.0, 1.0), pair=st.floats(-2.0, 2.0), rng=st.integers(0, 99))
def test_evolve_is_feasible_and_never_worse_than_its_seed(rows, slack, pair, rng):
    classes = _classes(rows)
    fastest = sum(min(o.latency for o in c) for c in classes)
    slowest = sum(max(o.latency for o in c) for c in classes)
    budget = fastest * 1.05 + slack * (slowest - fastest)
    seed = solve_knapsack(classes, budget, units=200).indices

    def score(idx):  # additive part plus an interaction between the first two classes
        base = sum(c[k].importance for c, k in zip(classes, idx, strict=True))
        return base + (pair if len(idx) > 1 and idx[0] == idx[1] else 0.0)

    calls = []
    out = evolve(classes, budget, seed, lambda x: calls.append(x) or score(x), rng=rng)
    assert _latency(classes, out.indices) <= budget + 1e-9
    assert out.score == pytest.approx(score(out.indices))
    assert out.score >= score(tuple(seed)) - 1e-12
    assert len(calls) == len(set(calls)) == out.evaluated  # each selection scored once


def test_evolve_finds_an_interaction_the_knapsack_cannot_see():
    # Three groups at widths full / mid / narrow (latency 3 / 2 / 1, alone costing 0 / 1 / 3).
    # Groups 0 and 1 cut to narrow together lose much less than apart (their channels cover
    # for each other): the joint optimum (narrow, narrow, full) scores -0.5, while any
    # selection the additive knapsack prefers scores -5.
    rows = [[(3.0, 0.0), (2.0, -1.0), (1.0, -3.0)]] * 3
    classes = _classes(rows)
    budget = 5.0

    def joint(idx):
        base = sum(c[k].importance for c, k in zip(classes, idx, strict=True))
        return base + (5.5 if idx[0] == idx[1] == 2 else 0.0)

    best = max(
        (x for x in product(range(3), repeat=3) if _latency(classes, x) <= budget), key=joint
    )
    seed = solve_knapsack(classes, budget, units=100).indices
    out = evolve(classes, budget, seed, joint, generations=8, rng=1)
    assert joint(out.indices) == pytest.approx(joint(best))
    assert joint(out.indices) > joint(tuple(seed))


def test_evolve_rejects_a_seed_over_budget():
    classes = _classes([[(3.0, 0.0), (1.0, -1.0)]])
    with pytest.raises(ValueError, match="exceeds the budget"):
        evolve(classes, 2.0, [0], lambda x: 0.0)
    with pytest.raises(ValueError, match="one valid option"):
        evolve(classes, 2.0, [5], lambda x: 0.0)
