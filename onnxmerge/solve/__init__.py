"""Depth-compression solvers: pick which activations to keep and which convs to merge or prune.

Pure numpy (no ONNX): the caller turns a network into one sequence of positions ``0..L`` and a
list of :class:`Entry` candidates, and gets back a :class:`Solution`.

- :func:`solve_layermerge`: LayerMerge's one-stage DP over a menu of (possibly pruned) merged
  convs per segment.
- :func:`solve_depth`: Kim et al.'s two-stage DP (fastest merge groups per activation-free span,
  then a budgeted DP over spans), all convs kept.
- :func:`solve_knapsack`: the width solver's multiple-choice knapsack (one :class:`Option` per
  class, a class per channel group) on the same latency grid; ``knapsack.fastest_plan`` is
  exported as :func:`knapsack_fastest_plan`; :func:`evolution.evolve` refines its choice by a
  joint fitness (LACP's evolutionary search).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Literal

from onnxmerge.solve import depth, layermerge
from onnxmerge.solve.depth import kept_entries, optimal_groups, solve_depth
from onnxmerge.solve.entries import (
    DepthSolution,
    Entry,
    Grid,
    InfeasibleBudget,
    Solution,
    make_grid,
)
from onnxmerge.solve.knapsack import KnapsackSolution, Option, shift_negative, solve_knapsack
from onnxmerge.solve.knapsack import fastest_plan as knapsack_fastest_plan
from onnxmerge.solve.layermerge import solve_layermerge

Method = Literal["layermerge", "depth"]

#: The depth methods, in the order help texts list them (the first is the default).
METHODS: tuple[str, ...] = ("layermerge", "depth")

__all__ = [
    "DepthSolution",
    "Entry",
    "Grid",
    "InfeasibleBudget",
    "KnapsackSolution",
    "METHODS",
    "Method",
    "Option",
    "Solution",
    "fastest_plan",
    "kept_entries",
    "knapsack_fastest_plan",
    "make_grid",
    "max_importance_plan",
    "min_latency",
    "optimal_groups",
    "shift_negative",
    "solve",
    "solve_depth",
    "solve_knapsack",
    "solve_layermerge",
]


def _module(method: Method) -> ModuleType:
    if method == "layermerge":
        return layermerge
    if method == "depth":
        return depth
    raise ValueError(f"unknown method {method!r}; expected 'layermerge' or 'depth'")


def solve(
    length: int, entries: Iterable[Entry], budget: float, *, method: Method, units: int = 1000
) -> Solution:
    """Dispatch to :func:`solve_layermerge` or :func:`solve_depth`."""
    if method == "depth":
        return solve_depth(length, entries, budget, units=units)
    if method == "layermerge":
        return solve_layermerge(length, entries, budget, units=units)
    raise ValueError(f"unknown method {method!r}; expected 'layermerge' or 'depth'")


def fastest_plan(length: int, entries: Iterable[Entry], method: Method) -> Solution:
    """The minimum-latency plan of ``method`` (no budget, no grid rounding)."""
    return _module(method).fastest_plan(length, entries)


def max_importance_plan(length: int, entries: Iterable[Entry], method: Method) -> Solution:
    """The plan of ``method`` that an unlimited budget buys (maximum importance)."""
    return _module(method).max_importance_plan(length, entries)


def min_latency(length: int, entries: Iterable[Entry], method: Method) -> float:
    """Smallest latency (ms) any plan of ``method`` reaches: the floor for a budget."""
    return fastest_plan(length, entries, method).latency
