"""Problem building: analysis -> candidates -> latency and importance tables -> the solver.

One place builds what the solver needs, for `compress`, `profile` and the benchmarks:

1. the kind's candidates (kinds/);
2. the latency table: each candidate's convs timed alone on the backend (latency.LatencyTable,
   cached on disk, the runtime's fixed per-call cost and layout conversions subtracted); a
   candidate costs the sum of its convs (width: their shares);
3. the end-to-end latency of the input network (cached too, as its ratio to the table's
   latency of its convs, keyed by which convs those are: LatencyTable.network_ms), and the
   part of it the candidates do not cover ("other ops": the input latency minus the table
   latency of the unchanged network).
   When the convs timed alone add up to more than the whole network (small convs keep some
   fixed cost in isolation), the table is scaled so the unchanged network is predicted right.
   Where the backend profiles (ort-cpu) and the kind's candidates are the network's convs
   (depth), the profile of the input splits it instead: the fraction of its kernel time
   outside convs and activations is the other ops, the rest the convs as they run in the
   network, which the table's (timed alone, with hot caches) are scaled to, up or down: on
   the MobileNetV2 replica the convs ran 1.4x their table time inside the network, so a
   remainder held fixed over-predicted every plan that merged much (8x measured, 2.8x
   predicted);
4. the importance table (kind.importance on the built-in distortion, cached on disk keyed by
   the model, the feeds and the options), after the kind screened out candidates that can
   only lose;
5. the kind's solver over both tables.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxmerge.analysis import Analysis
from onnxmerge.calibration.data import CalibrationSet, calibration_set
from onnxmerge.calibration.preprocess import TORCH, Preprocess
from onnxmerge.importance_cache import ImportanceCache
from onnxmerge.kinds import Kind, Problem
from onnxmerge.latency import Backend, LatencyTable, random_feed

DistortionFn = Callable[[onnx.ModelProto], float]


@dataclass
class Scoring:
    """What the importance of a candidate is measured with.

    `feeds` (batch-1 input dicts) and their source `groups` come from the calibration set;
    `calibrate` scores each candidate with its least-squares refit conv (fitted on half the
    groups, scored on the other half), `fit_options` go to the fit (ridge, ...);
    `distortion_fn`, if given, replaces the built-in distortion (it receives each swapped
    model and returns a float; larger is worse).
    """

    feeds: list[dict[str, np.ndarray]]
    groups: list[int]
    calibrate: bool = True
    fit_options: dict = field(default_factory=dict)
    distortion_fn: DistortionFn | None = None
    progress: bool = True

    @classmethod
    def from_calibration(cls, calib: CalibrationSet, **options: Any) -> Scoring:
        """Scoring on a calibration set."""
        return cls(calib.feeds, calib.groups, **options)


@dataclass
class Tables:
    """Candidates with their latencies (ms, unscaled) and cache statistics."""

    candidates: list
    latency: dict[Any, float]
    signatures: int
    hits: int
    new: int
    seconds: float


def latency_table(
    kind: Kind,
    candidates: list,
    table: LatencyTable,
    progress: bool = True,
    refresh: bool = False,
) -> Tables:
    """Time every distinct conv of the candidates in `table` (cached, corrected for load;
    all timed again with `refresh`); a candidate costs their weighted sum (Kind.costs)."""
    clock = time.perf_counter()
    costs = {c: kind.costs(c) for c in candidates}
    sigs = [s for pairs in costs.values() for s, _ in pairs]
    ms = table.measure_all(sigs, progress=progress, in_network=True, refresh=refresh)
    kind.priced(ms)
    hits, new = table.stats.hits, table.stats.new
    latency = {c: float(sum(w * ms[s] for s, w in pairs)) for c, pairs in costs.items()}
    return Tables(candidates, latency, len(set(sigs)), hits, new, time.perf_counter() - clock)


@dataclass
class Built:
    """A solvable problem: the kind's solver and everything the report and plan need."""

    kind: Kind
    analysis: Analysis
    tables: Tables
    candidates: list  # after screening
    latency: dict  # scaled, ms
    importance: dict
    problem: Problem
    input_ms: float  # the input network end to end (LatencyTable.network_ms)
    covered_ms: float  # table latency of the unchanged network (unscaled)
    scale: float
    remainder_ms: float  # what the candidates do not cover
    importance_hits: int
    log: list[str] = field(default_factory=list)
    moved_ms: float = 0.0  # of the input's other ops, what the candidates hold (Kind.held)
    input_key: str = ""  # the input's row in LatencyTable.network_ms (`what`)

    @property
    def unchanged_ms(self) -> float:
        """Predicted latency of the unchanged candidates (scaled, with what they hold)."""
        return self.covered_ms * self.scale + self.moved_ms


def build_problem(
    analysis: Analysis,
    kind: Kind,
    backend: Backend,
    calib: CalibrationSet,
    scoring: Scoring,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Built:
    """Steps 1-5 of the module docstring. Raises OnnxMergeError (e.g. nothing to compress)."""
    kind.prepare(analysis, backend, cache_dir, scoring)
    candidates = kind.candidates(analysis)
    timed, shapes = analysis.timing(backend.batch)
    with LatencyTable(cache_dir, backend) as table:
        tables = latency_table(kind, candidates, table, progress)
        covered = sum(tables.latency[c] for c in candidates if kind.unchanged(c))
        digest = analysis.sha256 or None  # hashing a large model again costs seconds
        # The ratio is to the table's convs: which convs those are is part of the key (a
        # version that covers more convs must not read an older one's ratio).
        names = sorted(s.key() for c in candidates if kind.unchanged(c) for s, _ in kind.costs(c))
        what = f"{kind.name} {hashlib.sha256(' '.join(names).encode()).hexdigest()[:16]}"
        input_ms, cached = table.network_ms(timed, shapes, covered, what, digest)
        other = None
        if kind.covers_convs:  # the profile costs seconds: cached as the input's time is
            other = table.network_ms(timed, shapes, 1.0, f"{what} other", digest, lambda: (
                backend.other_fraction(timed.SerializeToString(), random_feed(timed, shapes=shapes))
            ))[0]  # fmt: skip
    phases = [f"latency table {tables.seconds:.1f} s"]
    screened = kind.screen(candidates, tables.latency, scoring)
    dropped = len(candidates) - len(screened)
    clock = time.perf_counter()
    importance, hits, scored = _importance(analysis, kind, screened, scoring, cache_dir)
    phases.append(f"importance {time.perf_counter() - clock:.1f} s ({scored} scored)")
    scale, remainder = _split(input_ms, covered, other)
    held = kind.held(remainder, screened)
    moved = sum(held.get(c, 0.0) for c in screened if kind.unchanged(c))
    latency = {c: tables.latency[c] * scale + held.get(c, 0.0) for c in screened}
    log = [
        calib.about,
        "time: " + ", ".join(phases),
        f"input {input_ms:.3f} ms{' (cache)' if cached else ''}; chains' convs {covered:.3f} "
        "ms in the table"
        + (f" (scaled by {scale:.2f})" if scale != 1 else "")
        + f"; other ops {remainder:.3f} ms"
        + (f", {moved:.3f} ms of them shrinking with the candidates" if moved else ""),
    ]
    if dropped:
        log.insert(1, f"dropped {dropped} {kind.screened}")
    log[1:1] = kind.notes()
    return Built(
        kind,
        analysis,
        tables,
        screened,
        latency,
        importance,
        kind.problem(screened, latency, importance),
        input_ms,
        covered,
        scale,
        remainder - moved,
        hits,
        log,
        moved,
        what,
    )


def _split(input_ms: float, covered: float, other: float | None) -> tuple[float, float]:
    """(the scale of the table's convs, the other ops in ms) of an input network of
    `input_ms` whose convs the table puts at `covered`; `other`: the fraction of its time
    outside convs, from a profile (module docstring, step 3), or None. The scale stays
    within [1/4, 4]; the unchanged network is predicted at `input_ms` either way."""
    if covered <= 0:
        return 1.0, input_ms
    if other is None:
        return min(1.0, input_ms / covered), max(input_ms - covered, 0.0)
    scale = min(max(input_ms * (1.0 - other) / covered, 0.25), 4.0)
    return scale, max(input_ms - covered * scale, 0.0)


def _importance(
    analysis: Analysis,
    kind: Kind,
    candidates: list,
    scoring: Scoring,
    cache_dir: str | os.PathLike | None,
) -> tuple[dict, int, int]:
    """(importance by candidate, cache hits, candidates scored now)."""
    changed = [c for c in candidates if not kind.unchanged(c)]
    if scoring.distortion_fn is not None:  # a user's scorer: never cached
        return kind.importance(analysis, changed, scoring), 0, len(changed)
    from onnxmerge.importance import DISTORTION_VERSION

    options = {**scoring.fit_options, "groups": scoring.groups, "kind": kind.name}
    options["distortion"] = DISTORTION_VERSION
    cache = ImportanceCache(
        cache_dir, analysis.reference_sha256, scoring.feeds, scoring.calibrate, options
    )
    todo = [c for c in changed if kind.key(c) not in cache]
    cache.update({kind.key(c): v for c, v in kind.importance(analysis, todo, scoring).items()})
    return {c: cache[kind.key(c)] for c in changed}, len(changed) - len(todo), len(todo)


def scoring_for(
    analysis: Analysis,
    calib: str | os.PathLike | Sequence[str | os.PathLike] | None,
    calib_count: int,
    seed: int = 0,
    preprocess: Preprocess = TORCH,
    **options: Any,
) -> tuple[CalibrationSet, Scoring]:
    """The calibration set of `calib` for the analyzed model (images prepared as
    `preprocess` says), and a Scoring on it."""
    calib_set = calibration_set(analysis.model, calib, calib_count, seed, preprocess)
    return calib_set, Scoring.from_calibration(calib_set, **options)
