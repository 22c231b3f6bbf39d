"""The main job, as a thin driver: analyze once, build the problem, search, calibrate, record.

    analysis (load, normalize, match: once)  ->  problem (candidates, latency and importance
    tables, the kind's solver)  ->  search (solve at a budget, build a copy of the graph,
    measure end to end against the input, move the budget)  ->  calibrate (refit the new
    convs by least squares toward the original's tensors)  ->  plan.

Each stage lives in its own module (analysis.py, problem.py, search.py, calibration/); the
kind of compression (kinds/) is a parameter. `from_plan` rebuilds a saved plan without
solving. The public entry points with every parameter documented are in onnxmerge.api.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import onnx

from onnxmerge.analysis import Analysis, ModelLike, analyze
from onnxmerge.calibration.data import calibration_inputs, describe
from onnxmerge.calibration.network import GroupFit, refit_merged
from onnxmerge.errors import OnnxMergeError
from onnxmerge.kinds import Kind, Selection, get_kind
from onnxmerge.latency import compare_models, get_backend
from onnxmerge.plan import Plan
from onnxmerge.problem import DistortionFn, build_problem, scoring_for
from onnxmerge.runtime import check_runs
from onnxmerge.search import Measured, search


def parse_speedup(value: float | str) -> float:
    """A speedup as a float above 1; "max" (or inf) is math.inf, the fastest plan.

    Raises OnnxMergeError for anything else.
    """
    if isinstance(value, str):
        if value.strip().lower() == "max":
            return math.inf
        try:
            value = float(value)
        except ValueError:
            raise OnnxMergeError(f"speedup: expected a number or 'max', got {value!r}") from None
    if not value > 1.0:
        raise OnnxMergeError(f"speedup: must be above 1.0, got {value}")
    return float(value)


@dataclass
class CompressResult:
    """What `compress` / `from_plan` produced.

    `model`: the compressed network (ModelProto); `plan`: what was removed and merged, with
    the measured latencies; `candidates` and `signatures`: sizes of the latency table
    (candidate convs, distinct ones); `latency_hits` / `latency_new`: cached vs measured;
    `tries`: plans measured; `log`: report lines; `items`: the kind's chosen items (depth:
    Segments); `calibration`: per new conv, what the least-squares refit did;
    `importance_hits`: scores read from the cache.
    """

    model: onnx.ModelProto
    plan: Plan
    candidates: int
    signatures: int
    latency_hits: int
    latency_new: int
    tries: int
    log: list[str] = field(default_factory=list)
    items: tuple = ()
    calibration: list[GroupFit] = field(default_factory=list)
    importance_hits: int = 0
    analysis: Analysis | None = field(default=None, repr=False)
    kind: Kind | None = field(default=None, repr=False)

    def summary(self) -> list[str]:
        """The report as lines, as the CLI and the Polygraphy loader print it."""
        plan = self.plan
        merged = [g for g in plan.groups if g.end - g.start > 1]
        lines = [
            f"candidates {self.candidates} ({self.signatures} distinct convs; latency cache "
            f"{self.latency_hits} hits, {self.latency_new} measured; importance cache "
            f"{self.importance_hits} hits)"
        ]
        lines += self.log
        lines += [f"  calibrated {fit}" for fit in self.calibration]
        for g in merged:
            pruned = f", pruned {g.pruned}" if g.pruned else ""
            lines.append(
                f"  {g.chain} ({g.start},{g.end}] -> one {g.kernel[0]}x{g.kernel[1]} conv"
                f"{pruned}: {g.latency_ms:.3f} ms, importance {g.importance:.4g}"
            )
        target = "max" if plan.target_speedup is None else f"{plan.target_speedup}"
        lines.append(
            f"{len(merged)} merged groups; predicted {plan.predicted_ms:.3f} ms; measured "
            f"{plan.measured_input_ms:.3f} -> {plan.measured_output_ms:.3f} ms on "
            f"{plan.backend} = {plan.measured_speedup:.2f}x (target {target}x)"
        )
        return lines

    def rebuild(self, form: str = "merged") -> onnx.ModelProto:
        """The network of this plan again, uncalibrated: "merged" (plain kernel composition)
        or "finetune" (removed activations and pruned convs, unmerged, padding moved to each
        group's first conv; see README, "Exactness")."""
        return build(self.analysis, self.kind, self.items, form)[0]

    def finetune_graph(self) -> onnx.ModelProto:
        """The fine-tune form (rebuild("finetune"))."""
        return self.rebuild("finetune")


def build(analysis: Analysis, kind: Kind, items, form: str = "merged"):
    """(model, new Conv node names) of `items` applied to a copy of the analyzed graph."""
    model, nodes = analysis.rewrite(lambda g, m, names: kind.apply(g, m, items, form, names))
    return model, [n.name for n in nodes]


def compress(
    model: ModelLike,
    speedup: float | str,
    *,
    kind: str = "depth",
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    method: str = "layermerge",
    calib: str | os.PathLike | None = None,
    calib_count: int = 16,
    calibrate: bool = True,
    calibrate_importance: bool | None = None,
    ridge: float = 1e-2,
    cache_dir: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
    max_kernel: int = 7,
    units: int = 1000,
    tries: int = 4,
    progress: bool = True,
    distortion_fn: DistortionFn | None = None,
    candidate_filter: Callable | None = None,
    keep: Sequence[str] = (),
) -> CompressResult:
    """Compress `model` to run `speedup` times faster on `backend` (see onnxmerge.api.compress
    for every parameter)."""
    target = parse_speedup(speedup)
    if tries < 1:
        raise OnnxMergeError(f"tries must be at least 1, got {tries}")
    the_kind = get_kind(
        kind, method=method, max_kernel=max_kernel, candidate_filter=candidate_filter, units=units
    )
    analysis = analyze(model, input_shapes, external_data_dir, keep)
    be = get_backend(backend, **(backend_options or {}))
    cal_imp = calibrate if calibrate_importance is None else calibrate_importance
    calib_set, scoring = scoring_for(
        analysis,
        calib,
        calib_count,
        calibrate=cal_imp,
        fit_options={"ridge": ridge},
        distortion_fn=distortion_fn,
        progress=progress,
    )
    built = build_problem(
        analysis, the_kind, be, calib_set, scoring, cache_dir, progress, calib_source=calib
    )
    log = list(built.log)

    def measure(selection: Selection) -> Measured:
        out, names = build(analysis, the_kind, selection.items)
        t_a, t_b = compare_models(analysis.model, out, be, analysis.input_shapes)
        return Measured(t_a.median_ms, t_b.median_ms, (out, names))

    found = search(
        built.problem.solve,
        built.problem.fastest(),
        measure,
        speedup=target,
        input_ms=built.input.median_ms,
        remainder_ms=built.remainder_ms,
        unchanged_ms=built.unchanged_ms,
        tries=tries,
        log=log,
        backend=backend,
    )
    out, names = found.measured.built
    fits: list[GroupFit] = []
    if calibrate:
        out, fits = _calibrate(analysis, out, names, scoring.feeds, {"ridge": ridge}, log)
    sel = found.selection
    plan = Plan(
        method,
        backend,
        None if math.isinf(target) else target,
        found.budget,
        sel.latency + built.remainder_ms,
        found.measured.input_ms,
        found.measured.output_ms,
        the_kind.record(analysis, sel, built.latency, built.importance),
        be.fingerprint(),
    )
    return CompressResult(
        out,
        plan,
        len(built.candidates),
        built.tables.signatures,
        built.tables.hits,
        built.tables.new,
        found.tries,
        log,
        tuple(getattr(i, "segment", i) for i in sel.items),
        fits,
        built.importance_hits,
        analysis,
        the_kind,
    )


def _calibrate(
    analysis: Analysis,
    out: onnx.ModelProto,
    names: list[str],
    feeds: list[dict],
    fit_options: dict,
    log: list[str],
) -> tuple[onnx.ModelProto, list[GroupFit]]:
    """Refit the new convs of `out` toward the original's tensors (calibration.network)."""
    # The refit changes weights only, not geometry: latencies measured before it stand.
    clock = time.perf_counter()
    out, fits = refit_merged(analysis.reference, out, set(names), feeds, fit_options)
    check_runs(out)
    log.append(f"calibrated {len(fits)} merged convs in {time.perf_counter() - clock:.1f} s")
    return out, fits


def from_plan(
    model: ModelLike,
    plan: Plan,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    calib: str | os.PathLike | None = None,
    calib_count: int = 16,
    calibrate: bool = True,
    ridge: float = 1e-2,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
    kind: str = "depth",
    keep: Sequence[str] = (),
) -> CompressResult:
    """Rebuild a saved plan on `model` (no latency table, importance or solve), measure it.

    The plan's chains are found by name; a plan that does not fit the model is an error.
    """
    analysis = analyze(model, input_shapes, external_data_dir, keep)
    the_kind = get_kind(kind, method=plan.method if plan.method else "layermerge")
    items = the_kind.from_record(analysis, plan)
    be = get_backend(backend, **(backend_options or {}))
    out, names = build(analysis, the_kind, items)
    t_a, t_b = compare_models(analysis.model, out, be, analysis.input_shapes)
    log = [
        f"rebuilt {len(plan.groups)} plan groups; measured {t_b.median_ms:.3f} ms vs "
        f"{t_a.median_ms:.3f} ms = {t_a.median_ms / t_b.median_ms:.3f}x"
    ]
    fits: list[GroupFit] = []
    if calibrate:
        feeds = calibration_inputs(analysis.model, calib, calib_count)
        log.insert(0, describe(calib, analysis.model))
        out, fits = _calibrate(analysis, out, names, feeds, {"ridge": ridge}, log)
    new_plan = replace(
        plan,
        backend=backend,
        measured_input_ms=t_a.median_ms,
        measured_output_ms=t_b.median_ms,
        fingerprint=be.fingerprint(),
    )
    return CompressResult(
        out, new_plan, 0, 0, 0, 0, 1, log, tuple(items), fits, 0, analysis, the_kind
    )
