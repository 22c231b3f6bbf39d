"""Shared data model of the depth-compression solvers: candidates, plans and the latency grid.

A problem is one sequence of positions ``0..L``. A candidate (:class:`Entry`) says "the convs of
segment ``(start, end]`` can become one merged conv that takes ``latency`` ms and costs
``importance``". Which ``(start, end)`` pairs have entries encodes every validity rule (breaks,
residual laminarity), so the solvers never look at topology.

Discretisation (both DPs index their tables by an integer latency budget ``t``)::

    unit = budget / units
    g(x) = ceil(x / unit)           # round UP: a plan whose g-sum fits never overshoots
    tau  = floor(budget / unit)

Both quotients are snapped to the nearest integer when within 1e-9 of it, so float noise in the
division (0.1 / (0.3 / 3) = 1.0000000000000002) neither charges a whole extra unit nor loses
one. Because ``g(x) * unit >= x`` (up to that 1e-9 of a unit), every plan with ``sum g <= tau``
has exact latency ``<= tau * unit <= budget`` (equal when tau was snapped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: Importances closer than this are a tie: then fewer changes win, then lower latency.
IMPORTANCE_TOL = 1e-9

#: Grid quotients this close to an integer are float noise and snap to it.
SNAP_TOL = 1e-9

#: Largest DP table (positions x budget steps) the solvers agree to allocate.
MAX_CELLS = 60_000_000


@dataclass(frozen=True)
class Entry:
    """One candidate merged conv for segment ``(start, end]``; ``key`` is returned untouched.

    ``changes`` counts what the entry removes (activations inside the segment, pruned convs;
    default ``end - start - 1``): among plans of equal importance the solvers take the fewest
    changes, then the lower latency.
    """

    start: int
    end: int
    latency: float
    importance: float
    key: object = None
    all_kept: bool = True
    changes: int | None = None

    @property
    def change_count(self) -> int:
        """``changes``, or the activations inside the segment when not given."""
        return self.end - self.start - 1 if self.changes is None else self.changes


@dataclass
class Solution:
    """A plan: one entry per segment, segments tiling ``(0, L]`` in order."""

    segments: list[Entry]
    latency: float
    importance: float

    @property
    def boundaries(self) -> list[int]:
        """Positions where an activation is kept: the segment ends, ascending, including L."""
        return [entry.end for entry in self.segments]


@dataclass
class DepthSolution(Solution):
    """A K23 plan: activation-free spans, each realised by its fastest merge groups.

    ``segments`` is the flat list of merge groups (the convs the network becomes), ``groups`` the
    same entries grouped per span, and ``spans`` the entry of each span, which carries the span's
    importance. ``importance`` is the sum over ``spans``, ``latency`` the sum over ``segments``.
    """

    groups: list[list[Entry]]
    spans: list[Entry]

    @property
    def boundaries(self) -> list[int]:
        """Activation boundaries (span ends), ascending, including L."""
        return [span.end for span in self.spans]

    @property
    def merge_boundaries(self) -> list[int]:
        """Ends of all merge groups: the activation boundaries plus the linear conv splits."""
        return [entry.end for entry in self.segments]


class InfeasibleBudget(ValueError):
    """No plan fits the latency budget; ``min_latency`` is what the fastest plan needs."""

    def __init__(self, budget: float, min_latency: float, units: int) -> None:
        self.budget = budget
        self.min_latency = min_latency
        self.units = units
        if min_latency > budget:
            msg = (
                f"latency budget {budget:.6g} ms is below the fastest reachable plan "
                f"({min_latency:.6g} ms); raise the budget to at least that"
            )
        else:
            msg = (
                f"latency budget {budget:.6g} ms fits the fastest plan ({min_latency:.6g} ms) "
                f"only without rounding latencies up to 1/{units} of the budget; "
                f"raise the budget slightly or use more units"
            )
        super().__init__(msg)


@dataclass(frozen=True)
class Grid:
    """The integer latency grid a DP runs on: ``tau`` steps of ``unit`` ms each."""

    budget: float
    units: int
    unit: float
    tau: int

    def steps(self, latency: float) -> int:
        """Grid steps charged for ``latency``: rounded up so plans never overshoot.

        Anything beyond the budget reads ``tau + 1`` (it never fits), which keeps huge ratios
        (a tiny budget) from overflowing the integer type.
        """
        return int(self.steps_array(np.array([latency]))[0])

    def steps_array(self, latencies: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`steps`: ceil of ``latency / unit``, snapped within 1e-9."""
        ratio = np.minimum(np.asarray(latencies, dtype=np.float64) / self.unit, self.tau + 1.0)
        nearest = np.rint(ratio)
        snapped = np.abs(ratio - nearest) <= SNAP_TOL
        return np.where(snapped, nearest, np.ceil(ratio)).astype(np.int64)


def relax(dest: tuple[np.ndarray, ...], cand: tuple[np.ndarray, ...]) -> np.ndarray:
    """One vectorised DP step: where a candidate (value, changes, latency) beats the cell in
    `dest` (more importance beyond IMPORTANCE_TOL; on a tie, fewer changes, then lower
    latency), copy it into `dest` in place. Returns the mask of winning cells (for pointers).
    Candidate values must be finite (destinations may hold -inf)."""
    (dv, dc, dl), (cv, cc, cl) = dest, cand
    tie = np.abs(cv - dv) <= IMPORTANCE_TOL
    fewer = (cc < dc) | ((cc == dc) & (cl < dl))
    wins = (cv > dv + IMPORTANCE_TOL) | (tie & fewer)
    for d, c in zip(dest, cand, strict=True):
        np.copyto(d, c, where=wins)
    return wins


def make_grid(budget: float, units: int) -> Grid:
    """Build the grid for ``budget`` ms split into ``units`` steps.

    A zero budget keeps a one-ms unit so only zero-latency plans (``g == 0``) fit.
    """
    if not isinstance(units, int | np.integer) or units < 1:
        raise ValueError(f"units must be a positive integer, got {units!r}")
    if not math.isfinite(budget):
        raise ValueError(f"latency budget must be finite, got {budget!r}")
    if budget < 0:
        raise ValueError(f"latency budget must be >= 0, got {budget!r}")
    unit = budget / units
    if unit == 0:  # zero, or a budget so small its unit underflows: only free plans fit
        return Grid(budget=float(budget), units=int(units), unit=1.0, tau=0)
    ratio = budget / unit
    nearest = round(ratio)
    tau = int(nearest) if abs(ratio - nearest) <= SNAP_TOL else math.floor(ratio)
    return Grid(budget=float(budget), units=int(units), unit=unit, tau=tau)


def validate_entries(length: int, entries: Iterable[Entry]) -> list[Entry]:
    """Check positions and numbers once so the DPs can trust them; returns a list."""
    if not isinstance(length, int | np.integer) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    out = list(entries)
    for entry in out:
        if not (0 <= entry.start < entry.end <= length):
            raise ValueError(f"entry segment ({entry.start}, {entry.end}] is outside (0, {length}]")
        if not (math.isfinite(entry.latency) and entry.latency >= 0):
            raise ValueError(
                f"entry ({entry.start}, {entry.end}] has bad latency {entry.latency!r}"
            )
        if not math.isfinite(entry.importance):
            raise ValueError(
                f"entry ({entry.start}, {entry.end}] has non-finite importance {entry.importance!r}"
            )
    return out


def better(new: tuple, best: tuple, *, fastest: bool) -> bool:
    """Scalar comparison used by the exact (grid-free) DPs, of (importance, changes, latency).

    ``fastest=False``: higher importance wins; ties (1e-9) go to fewer changes, then to lower
    latency. ``fastest=True``: lower latency wins, ties (1e-12 relative) go to higher
    importance.
    """
    (imp, changes, lat), (best_imp, best_changes, best_lat) = new, best
    if fastest:
        tol = 1e-12 * max(1.0, abs(best_lat)) if math.isfinite(best_lat) else 0.0
        if lat < best_lat - tol:
            return True
        return abs(lat - best_lat) <= tol and imp > best_imp + IMPORTANCE_TOL
    if imp > best_imp + IMPORTANCE_TOL:
        return True
    if imp < best_imp - IMPORTANCE_TOL:
        return False
    return changes < best_changes or (changes == best_changes and lat < best_lat)


def exact_path(length: int, entries: Sequence[Entry], *, fastest: bool) -> list[int] | None:
    """Grid-free best chain of entries tiling ``(0, length]``, as indices into ``entries``.

    ``fastest=True`` minimises latency (the min-latency DP used for infeasibility reports);
    otherwise importance is maximised (the plan an unlimited budget buys). ``None`` when no
    chain of entries reaches ``length``.

        B[0] = (0, 0, 0);  B[e] = best over entries (s, e) of B[s] + (importance, changes, latency)
    """
    by_end: list[list[int]] = [[] for _ in range(length + 1)]
    for index, entry in enumerate(entries):
        by_end[entry.end].append(index)
    best: list[tuple] = [(-math.inf, 0, math.inf)] * (length + 1)
    pointer = [-1] * (length + 1)
    best[0] = (0.0, 0, 0.0)
    for end in range(1, length + 1):
        for index in by_end[end]:
            entry = entries[index]
            imp, changes, lat = best[entry.start]
            if lat == math.inf:
                continue
            new = (imp + entry.importance, changes + entry.change_count, lat + entry.latency)
            if pointer[end] < 0 or better(new, best[end], fastest=fastest):
                best[end], pointer[end] = new, index
    if pointer[length] < 0:
        return None
    chosen: list[int] = []
    position = length
    while position > 0:
        index = pointer[position]
        chosen.append(index)
        position = entries[index].start
    chosen.reverse()
    return chosen


def no_cover_error(length: int) -> ValueError:
    """The error for a table whose segments cannot tile ``(0, length]``."""
    return ValueError(
        f"candidate segments do not tile (0, {length}]: no chain of entries reaches L"
    )
