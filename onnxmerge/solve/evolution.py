"""Evolutionary refinement of a multiple-choice selection under a latency budget (LACP).

LACP (Chen et al. 2021) searches channel widths restricted to the latency staircase's edges
with an evolutionary algorithm whose fitness is the pruned network's accuracy. onnxmerge uses it
to correct what the knapsack's additive surrogate misses: the knapsack (knapsack.py) sums each
group's importance measured with that group cut alone, while cuts interact. Here the fitness is
a caller's `score(indices)` (higher is better), e.g. minus the output distortion of the network
with every chosen width applied together.

Algorithm (elitist, so the result never scores below the seed):
    P_0 = {seed} + mutants of the seed
    repeat `generations` times:
        children = mutate(crossover(parent_a, parent_b)) for pairs drawn from the best half
        P_{k+1} = the `population` best of P_k + children (by score; each selection scored once)
A selection is feasible when its predicted latency (by default the sum of the chosen options'
`.latency`, ms, exact, not on the grid; a caller's `latency(indices)` where options do not
add up) is at most the budget; infeasible children are dropped.
A mutation moves one class one step along its options sorted by latency (a neighbouring stair
edge), as LACP does. Pure Python + numpy: no ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Evolved", "evolve"]


@dataclass(frozen=True)
class Evolved:
    """The best selection found: option index per class, its score, and how many selections
    were scored (the cost of the search, in calls of `score`)."""

    indices: tuple[int, ...]
    score: float
    evaluated: int


def _latency(classes: Sequence[Sequence[Any]], indices: Sequence[int]) -> float:
    return float(sum(classes[i][k].latency for i, k in enumerate(indices)))


def evolve(
    classes: Sequence[Sequence[Any]],
    budget_ms: float,
    seed: Sequence[int],
    score: Callable[[tuple[int, ...]], float],
    *,
    generations: int = 5,
    population: int = 8,
    mutations: int = 2,
    rng: int | np.random.Generator = 0,
    latency: Callable[[tuple[int, ...]], float] | None = None,
) -> Evolved:
    """Refine `seed` (one option index per class, within `budget_ms`) by evolution.

    Args:
        classes: options per class, each with a `.latency` (ms; summed across classes).
        budget_ms: the latency budget; the seed must fit it.
        seed: the starting selection (e.g. the knapsack's), always in the population.
        score: fitness of a selection, higher is better; called once per distinct selection.
        generations, population, mutations: search size (mutated classes per child).
        rng: seed or numpy Generator.
        latency: predicted latency (ms) of a selection; None: its options' summed `.latency`.

    Returns:
        Evolved: the best-scoring feasible selection seen (the seed if none beats it).

    Raises:
        ValueError: the seed does not fit the budget or names a missing option.
    """
    rng = np.random.default_rng(rng)
    seed = tuple(int(k) for k in seed)
    if len(seed) != len(classes) or any(not 0 <= k < len(c) for k, c in zip(seed, classes)):  # noqa: B905
        raise ValueError("seed must give one valid option index per class")
    predicted = latency or (lambda x: _latency(classes, x))
    if predicted(seed) > budget_ms + 1e-9:
        raise ValueError(f"seed latency {predicted(seed):.4f} ms exceeds the budget")
    # Options of each class by latency: a mutation steps to a neighbour in this order.
    order = [sorted(range(len(c)), key=lambda k, c=c: c[k].latency) for c in classes]
    rank = [{k: r for r, k in enumerate(o)} for o in order]
    movable = [i for i, c in enumerate(classes) if len(c) > 1]
    scores: dict[tuple[int, ...], float] = {}

    def fit(x: tuple[int, ...]) -> float:
        if x not in scores:
            scores[x] = float(score(x))
        return scores[x]

    def mutate(x: tuple[int, ...]) -> tuple[int, ...]:
        y = list(x)
        if not movable:
            return x
        for i in rng.choice(movable, size=min(mutations, len(movable)), replace=False):
            r = rank[i][y[i]] + int(rng.choice((-1, 1)))
            y[i] = order[i][min(max(r, 0), len(order[i]) - 1)]
        return tuple(y)

    def feasible(x: tuple[int, ...]) -> bool:
        return predicted(x) <= budget_ms + 1e-9

    pop = [seed]
    for _ in range(8 * population):
        if len(pop) >= population:
            break
        x = mutate(seed)
        if feasible(x) and x not in pop:
            pop.append(x)
    for _ in range(generations):
        pop.sort(key=fit, reverse=True)
        parents = pop[: max(2, len(pop) // 2)]
        children = []
        for _ in range(8 * population):
            if len(children) >= population:
                break
            a, b = rng.choice(len(parents), size=2)
            pick = rng.random(len(seed)) < 0.5
            pair = zip(parents[a], parents[b], pick, strict=True)
            x = mutate(tuple(p if t else q for p, q, t in pair))
            if feasible(x) and x not in scores and x not in children:
                children.append(x)
        pop = sorted(set(pop) | set(children), key=fit, reverse=True)[:population]
    best = max(pop, key=lambda x: (fit(x), x == seed))
    return Evolved(best, fit(best), len(scores))
