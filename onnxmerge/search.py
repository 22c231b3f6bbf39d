"""The budget search: solve, build, measure end to end, move the budget by the measured miss.

Pure orchestration over callbacks (no ONNX, no kind): `solve(budget_ms)` returns a Selection,
`measure(selection)` builds the network it stands for and times it against the input. The
latency table predicts only approximately (convs timed alone do not add up exactly), so the
search closes the loop on measured speedups:

- the budget starts at input_ms / speedup minus the part of the network no candidate covers;
- a plan reaches the target when it measures within [target - NOISE, target + OVERSHOOT]
  (removing more than asked costs fidelity, so a large overshoot is a miss too);
- a measured shortfall cuts the budget by the miss, an overshoot gives half of it back, as a
  ratio: the covered part measured k times its prediction, so the target asks for 1/k of it;
- once plans on both sides of the target are measured, the next budget interpolates between
  the nearest two (regula falsi on the measured output/input ratio against the plans'
  predicted latency): a linearized cost model, as width's, is off by a factor that grows
  with the cut, so one ratio step overshoots (ResNet-18 width at 1.5x measured 2.56x, 1.10x,
  2.23x, 1.30x by ratio steps alone);
- budgets stay inside a bracket: the highest budget whose plan reached the target and the
  lowest that fell short; a step that leaves the bracket, or a plan already measured,
  bisects it instead; a shortfall that asks for less than the floor (the fastest plan)
  measures the fastest plan next;
- a warm run starts where an earlier run of the request settled (remembered_start: the
  budget near the remembered one that gives the remembered plan);
- no plan is measured twice and the unchanged network never, but for the first plan of a
  remembered start: an earlier run settled on it, so a miss is as likely a moment's load as
  a changed network (the same plan measured 27-58 ms within one run on a shared 2-core
  machine). It is measured once more: inside the window it is kept (it agrees with the run
  that settled on it); outside, the two measurements are pooled (mean) and the search moves
  from there. At most `tries` plans are measured. Of the plans inside the
  window the most important one wins; if none is, the one closest above the window, and the
  log says so (no plan above target - NOISE: an error);
- a cold search stops at the first plan inside the window only when it is within REFINE of
  the target; one further above goes on toward the target while tries remain (fidelity falls
  steeply with speed: width pruning of the pretrained MobileNetV2 measured KL 0.40 at 1.13x,
  0.94 at 1.16x and 1.09 at 1.28x); a warm run keeps the plan its cold run chose.

`speedup = inf` asks for the fastest plan: one try.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onnxmerge.errors import OnnxMergeError, OutOfReach
from onnxmerge.kinds import Selection
from onnxmerge.solve import InfeasibleBudget

NOISE = 0.03  # measured speedups within 3% below the target count as reaching it
OVERSHOOT = 0.15  # ... and up to 15% above it; faster than that is loosened (costs fidelity)
REFINE = 0.05  # a cold search that lands more than 5% above the target tries to come closer
SPREAD, STEPS = 0.05, 10  # remembered_start solves budgets within 5% of the scaled one, 0.5% apart


@dataclass
class Measured:
    """One plan built and timed: input and output latency (ms, interleaved) and what was built;
    `cached`: the pair comes from an earlier run's timing (LatencyTable.compare), not this one."""

    input_ms: float
    output_ms: float
    built: Any = None
    cached: bool = False

    @property
    def speedup(self) -> float:
        """input_ms / output_ms."""
        return self.input_ms / self.output_ms


@dataclass
class Found:
    """The plan the search settled on."""

    selection: Selection
    measured: Measured
    budget: float  # ms, for the covered part
    tries: int = 1  # plans measured


def search(
    solve: Callable[[float], Selection],
    fastest: Selection,
    measure: Callable[[Selection], Measured],
    *,
    speedup: float,
    input_ms: float,
    remainder_ms: float,
    unchanged_ms: float,
    tries: int = 4,
    log: list[str] | None = None,
    backend: str = "the backend",
    start: float | None = None,
) -> Found:
    """Find the most important plan whose measured speedup reaches `speedup` (see module).

    `input_ms`: measured latency of the input network; `remainder_ms`: the part of it no
    candidate covers; `unchanged_ms`: predicted latency of the covered part unchanged;
    `start`: the budget to try first (the one an earlier run of the request settled on,
    memory.RequestMemory), instead of the one the input's latency asks for.
    Raises errors.OutOfReach when the target is out of reach (the fastest plan is predicted,
    then measured, too slow), OnnxMergeError when no measured plan reaches it; nothing is
    built then but the plans tried.
    """
    log = log if log is not None else []
    if tries < 1:
        raise OnnxMergeError(f"tries must be at least 1, got {tries}")
    predicted = fastest.latency + remainder_ms
    log.append(f"fastest plan predicted {predicted:.3f} ms")
    ceiling = input_ms / predicted if predicted > 0 else math.inf  # the table's best speedup
    if math.isinf(speedup):
        found = Found(fastest, measure(fastest), fastest.latency)
        _log_try(log, 1, found, remainder_ms)
        if found.measured.speedup <= 1.0:
            raise OnnxMergeError(
                f"no plan is faster than the input on {backend}: the fastest measured "
                f"{found.measured.speedup:.2f}x; nothing written"
            )
        return found
    floor = fastest.latency * (1 + 1e-6)
    budget = input_ms / speedup - remainder_ms if start is None else start
    probe = start is None and budget < fastest.latency
    if start is not None:
        log.append(f"starting at budget {start:.3f} ms, where an earlier run of this request "
                   "settled (cache)")  # fmt: skip
    if probe:
        # The table says no plan is fast enough; it can be pessimistic (convs timed alone
        # carry costs they do not have in a network), so the fastest plan is measured first.
        log.append(f"the table predicts at most ~{ceiling:.2f}x: measuring the fastest plan")
        first = Found(fastest, measure(fastest), fastest.latency)
        _log_try(log, 1, first, remainder_ms)
        if first.measured.speedup < speedup * (1 - NOISE):
            raise OutOfReach(
                first.measured.speedup,
                f"speedup {speedup:.3g} is out of reach on {backend}: the fastest plan is "
                f"predicted at ~{ceiling:.2f}x and measured {first.measured.speedup:.2f}x "
                f"({first.measured.output_ms:.3f} ms vs {first.measured.input_ms:.3f} ms); "
                "nothing written",
            )
        if first.measured.speedup <= speedup * (1 + REFINE) or tries == 1:
            return first
    # Budgets known to reach the target (with room to give back) and to fall short: every
    # later budget lies between them. The unchanged network reaches nothing.
    lo, hi = floor, max(unchanged_ms, floor) * (1 + 1e-6)
    best: tuple | None = None
    reached_by: dict[tuple, bool] = {}  # plan -> whether it reached the target when measured
    points: list[tuple[float, float]] = []  # (a plan's predicted ms, its measured output/input)
    repeats, tried_floor = 0, False
    if probe:  # the fastest plan was measured more than REFINE above the target
        reached_by[fastest.items], tried_floor = True, True
        best = (_rank(first, speedup), first)
        points.append((fastest.latency, 1 / first.measured.speedup))
        budget = floor - (first.measured.output_ms - input_ms / speedup) / 2
    for _ in range(3 * tries):  # `tries` plans measured; re-solves are cheap
        tried_floor = tried_floor or budget <= floor
        try:
            sel = solve(budget)
        except InfeasibleBudget:  # latencies round up to budget units: just above the floor
            sel = fastest
        if sel.items in reached_by or sel.unchanged:
            # Nothing new to measure at this budget: narrow the bracket and bisect.
            repeats += 1
            if reached_by.get(sel.items, False):
                lo = max(lo, budget)
            else:
                hi = min(hi, budget)
        else:
            found = Found(sel, measure(sel), budget)
            _log_try(log, len(reached_by) + 1, found, remainder_ms)
            first_remembered = start is not None and not reached_by
            if first_remembered and not in_window(found.measured.speedup, speedup):
                again = measure(sel)
                inside = in_window(again.speedup, speedup)
                found.measured = again if inside else _pooled(found.measured, again)
                log.append(
                    f"the remembered budget's plan, measured again: {again.speedup:.3f}x"
                    + (" (inside the window, as in the earlier run: kept)" if inside else
                       f"; pooled {found.measured.speedup:.3f}x")
                )  # fmt: skip
            measured = found.measured.speedup
            points.append((sel.latency, 1 / measured))
            reached = reached_by[sel.items] = measured >= speedup * (1 - NOISE)
            inside = in_window(measured, speedup)
            rank = _rank(found, speedup)
            if best is None or rank > best[0]:
                best = (rank, found)
            # Inside the window but well above the target (a cold run with tries left): the
            # search goes on toward it, as removing more than asked costs fidelity.
            close = inside and (start is not None or measured <= speedup * (1 + REFINE))
            if len(reached_by) == tries or close:
                break
            if reached:
                lo = max(lo, budget)
            else:
                hi = min(hi, budget)
            budget = _secant(points, 1 / speedup) or _next_budget(
                budget, found, speedup, remainder_ms
            )
            if lo < budget < hi:
                continue
            if budget <= lo == floor and not tried_floor:  # the shortfall asks for everything
                budget = floor
                continue
        budget = (lo + hi) / 2
        if hi - lo < 1e-3 * hi:  # nothing left between a plan that reaches and one that doesn't
            break
    if repeats:
        budgets = "budget" if repeats == 1 else "budgets"
        log.append(f"{repeats} more {budgets} gave a plan already measured, or no change")
    if best is None:
        raise OnnxMergeError(
            f"speedup {speedup:.3g} not reached on {backend}: every plan the budget allows leaves "
            "the network unchanged; nothing written (try a larger --speedup)"
        )
    found = best[1]
    if found.measured.speedup < speedup * (1 - NOISE):
        table = (
            f" (the latency table predicted up to ~{ceiling:.2f}x)" if ceiling >= speedup else ""
        )
        raise OnnxMergeError(
            f"speedup {speedup:.3g} not reached on {backend}: best measured "
            f"{found.measured.speedup:.2f}x after {len(reached_by)} plans{table}; nothing "
            "written (try a smaller --speedup)"
        )
    if not best[0][0]:
        log.append(
            f"no plan measured inside the window [{speedup * (1 - NOISE):.2f}x, "
            f"{speedup * (1 + OVERSHOOT):.2f}x] in {len(reached_by)} tries; the closest "
            f"above it: {found.measured.speedup:.2f}x"
        )
    found.tries = len(reached_by)
    return found


def remembered_start(
    value: Any, unchanged_ms: float, solve: Callable[[float], Selection], key: Callable
) -> float | None:
    """The budget (ms) to start at from what an earlier run of the request remembered
    (memory.RequestMemory): {"fraction": the budget it settled on over the unchanged
    network's predicted latency then, "plan": key(its selection)}, or a bare fraction (older
    caches); None for nothing usable.

    The fraction times today's `unchanged_ms` is where that plan was, give or take: today's
    table is not yesterday's times one factor (conv entries measured at another load, the
    correction estimated from noisy timings), and near a grid boundary the solver's choice
    flips (ResNet-50: another depth plan, measured anew, landing at 1.94x for 1.5x). So
    budgets within SPREAD of it are solved, nearest first (solves are cheap), and the first
    that gives the remembered plan is the start; none does: the scaled fraction.
    """
    if isinstance(value, int | float):
        return value * unchanged_ms
    if not isinstance(value, dict) or not isinstance(value.get("fraction"), int | float):
        return None
    start = value["fraction"] * unchanged_ms
    if value.get("plan") is None:
        return start
    for step in sorted(range(-STEPS, STEPS + 1), key=lambda i: (abs(i), i)):
        budget = start * (1 + SPREAD * step / STEPS)
        try:
            if key(solve(budget)) == value.get("plan"):
                return budget
        except InfeasibleBudget:
            continue
    return start


def in_window(measured: float, speedup: float) -> bool:
    """Whether a measured speedup reaches `speedup`: NOISE below it to OVERSHOOT above."""
    return speedup * (1 - NOISE) <= measured <= speedup * (1 + OVERSHOOT)


def _rank(found: Found, speedup: float) -> tuple[bool, bool, float]:
    """How a measured plan ranks (higher is better): inside the window, the most important;
    above it, the least overshoot; below, the fastest (only to name it in the error)."""
    measured = found.measured.speedup
    inside = in_window(measured, speedup)
    reached = measured >= speedup * (1 - NOISE)
    importance = found.selection.importance
    return inside, reached, importance if inside else -measured if reached else measured


def _pooled(a: Measured, b: Measured) -> Measured:
    """Two interleaved measurements of one plan as one: the mean of each side's medians."""
    return Measured((a.input_ms + b.input_ms) / 2, (a.output_ms + b.output_ms) / 2, a.built)


def _next_budget(budget: float, found: Found, speedup: float, remainder_ms: float) -> float:
    """The budget the measured miss asks for. The covered part measured k times its
    prediction, so the target needs (target - remainder) / k of predicted latency: a shortfall
    takes that step, an overshoot (more removed than asked, at the cost of fidelity) half of it.
    Where the measurement leaves nothing for the covered part, the miss moves it in ms."""
    m = found.measured
    goal = m.input_ms / speedup
    covered = m.output_ms - remainder_ms
    if covered > 0 and found.selection.latency > 0 and goal > remainder_ms:
        aim = found.selection.latency * (goal - remainder_ms) / covered
    else:
        aim = budget - (m.output_ms - goal)
    return aim if m.output_ms > goal else (budget + aim) / 2


def _secant(points: list[tuple[float, float]], goal: float) -> float | None:
    """Where the line through the nearest measured points on either side of `goal` crosses
    it: points are (predicted ms, measured output/input), `goal` 1 / speedup. None without
    a point on each side, or when the two disagree on the direction (noise)."""
    below = [p for p in points if p[1] <= goal]  # fast enough
    above = [p for p in points if p[1] > goal]
    if not below or not above:
        return None
    (x1, y1), (x2, y2) = max(below), min(above)
    if x2 <= x1:
        return None
    return x1 + (goal - y1) * (x2 - x1) / (y2 - y1)


def _log_try(log: list[str], n: int, found: Found, remainder_ms: float) -> None:
    m = found.measured
    rest = f" + {remainder_ms:.3f} ms other ops" if remainder_ms > 0 else ""
    how = "measured before (cache: an earlier run or split)" if m.cached else "measured"
    log.append(
        f"try {n}: budget {found.budget:.3f} ms{rest}, predicted "
        f"{found.selection.latency + remainder_ms:.3f} ms, {how} {m.output_ms:.3f} ms vs "
        f"{m.input_ms:.3f} ms = {m.speedup:.3f}x"
    )
