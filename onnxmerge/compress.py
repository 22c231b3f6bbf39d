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

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import onnx
from tqdm import tqdm

from onnxmerge.analysis import Analysis, ModelLike, analyze
from onnxmerge.calibration.data import Source, calibration_set
from onnxmerge.calibration.evaluation import deferred
from onnxmerge.calibration.network import GroupFit, refit_merged
from onnxmerge.calibration.preprocess import Preprocess, preprocess_from
from onnxmerge.errors import OnnxMergeError
from onnxmerge.importance import holdout_split
from onnxmerge.kinds import DEFAULT_PRUNE, Selection, get_kind
from onnxmerge.latency import LatencyTable, compare_models, get_backend
from onnxmerge.memory import RequestMemory
from onnxmerge.plan import Plan, provenance
from onnxmerge.problem import DistortionFn, build_problem, scoring_for
from onnxmerge.result import CompressResult, build, counted
from onnxmerge.runtime import check_runs
from onnxmerge.search import Measured, remembered_start, search
from onnxmerge.summary import summarize


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


def compress(
    model: ModelLike,
    speedup: float | str,
    *,
    kind: str = DEFAULT_PRUNE,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    method: str = "layermerge",
    calib: Source = None,
    calib_count: int = 16,
    eval_data: Source = None,
    eval_count: int = 32,
    preprocess: str | Preprocess | None = "torch",
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
    seed: int = 0,
    width_align: int | str = "auto",
    min_width: float = 0.25,
    width_importance: str = "measured",
    width_share: float | str = "auto",
    width_search: str = "dp",
    width_selection: str | None = None,
) -> CompressResult:
    """Compress `model` to run `speedup` times faster on `backend`, measured end to end.

    Args:
        model: path of an .onnx file (external data beside it or in `external_data_dir`) or
            an onnx.ModelProto.
        speedup: end-to-end speedup to reach (a number above 1), or "max" / math.inf for
            the fastest plan. Reached means measured within 3% below the target.
        method: "layermerge" (LayerMerge, ICML 2024: one DP over segments and pruned
            variants; default) or "depth" (Kim et al., ICML 2023: two-stage DP, all convs
            kept).
        backend: runtime to time on: "ort-cpu" (default), "ort-cuda", "ort-trt", "trt",
            "torch" (latency.backend_names()).
        backend_options: passed to the backend, e.g. {"batch": 1, "threads": 2,
            "precision": "fp16", "device": "cuda"}.
        calib: calibration data: a folder of images, an .npz of input arrays (optionally
            with an integer `groups` array), a list of several folders or several .npz
            files, or None for the built-in photos (or smooth random fields for inputs that
            are not images).
        calib_count: calibration inputs to use (default 16).
        eval_data, eval_count: inputs the summary scores on, read as `calib` (default: the
            built-in photos the calibration did not use; calibration.evaluation), at most
            `eval_count` (32). Neither the refit nor the search sees them.
        preprocess: how images (folders, built-in photos) become inputs: "torch" (ImageNet
            mean/std), "tf", "caffe", "raw" or a Preprocess (calibration.preprocess).
        calibrate: refit every merged conv by ridge least squares toward the original
            network's tensors (default True); False keeps plain kernel composition.
        calibrate_importance: score candidates with their refit convs (default: `calibrate`).
        ridge: ridge strength of the refit, relative to the mean input energy (0.01).
        cache_dir: folder (or .sqlite file) of the latency and importance caches (default
            $ONNXMERGE_CACHE or ~/.cache/onnxmerge).
        input_shapes: {input name: static shape} for dynamic inputs; used for analysis and
            timing only, the output keeps the input's dynamic dimensions.
        external_data_dir: folder of a model path's external data (default its folder).
        max_kernel: largest merged kernel considered (default 7).
        units: budget grid steps of the DP (default 1000).
        tries: most plans built and measured by the budget search (default 4).
        progress: show progress bars.
        distortion_fn: your own scorer, ModelProto -> float (larger is worse), used instead
            of the built-in output distortion for importance.
        candidate_filter: (candidate, chain) -> bool, restricts the merged convs the DP may
            choose (single unchanged convs are always allowed).
        keep: names of nodes and tensors to leave as they are (like Torch-Pruning's
            ignored layers): a kept conv is neither merged nor pruned, a kept activation not
            removed, a kept tensor stays a boundary no merge crosses.
        seed: seeds everything sampled (random-field calibration inputs, the refit's pixel
            subsample): the same seed, data and cache give the same plan.
        kind: what to remove: "depth" (layers and activations, merging what stays), "width"
            (whole channels, kinds/width) or "both" (default: width first, to
            speedup ** width_share, then depth on the pruned network for the rest; a model
            with nothing to remove for one kind gets the other alone).
        width_align: channel step of the widths offered ("auto": probed on the backend).
        min_width: narrowest width offered, as a fraction of a group's channels (0.25).
        width_importance: "measured" (output distortion on calibration data) or "splamp"
            (data-free weight norms, SP-LAMP).
        width_share: with kind="both", the share of the target (in log speedup) asked of
            width pruning, in (0, 1] (1: width alone), or "auto" (default): 1/3, 1/2, 2/3
            and 1 are each run and the one of least held-out distortion that reaches the
            target kept (both.py).
        width_search: "dp" (the knapsack over per-group importances) or "evolution" (then
            refined by the measured distortion of all cuts together, solve/evolution.py).
        width_selection: the channels a cut keeps: "obs" (those its consumers' least-squares
            refit needs most on the calibration data: greedy structured OBS) or "norm" (the
            largest weight norms); None: "obs", or "norm" with width_importance="splamp".

    Returns:
        CompressResult: `.model` (ModelProto), `.plan` (Plan; JSON via `.to_json()`), counts,
        `.log`, `.summary()` lines; `.finetune_graph()` builds the fine-tune form.

    Raises:
        OnnxMergeError: a bad model or option, no mergeable chain, a target out of reach or
            not reached (nothing is returned then).
    """
    settings = dict(locals())  # every argument, for the two stages of kind="both"
    settings["preprocess"] = preprocess = preprocess_from(preprocess)
    target = parse_speedup(speedup)
    if tries < 1:
        raise OnnxMergeError(f"tries must be at least 1, got {tries}")
    if kind == "both":
        from onnxmerge.both import check_both, compress_both

        stages = check_both(settings)
        memory = RequestMemory(cache_dir, stages["model"].sha256, settings, "split")
        return compress_both(compress, stages, memory)
    the_kind = get_kind(kind, **_kind_options(settings))
    if isinstance(model, Analysis):  # both.py's stages share the model it analyzed
        analysis = model
    else:
        analysis = analyze(model, input_shapes, external_data_dir, keep, lift=kind == "depth")
    scored = deferred(analysis.model, settings)
    memory = RequestMemory(cache_dir, analysis.sha256, settings, "budget fraction")
    be = get_backend(backend, **(backend_options or {}))
    cal_imp = calibrate if calibrate_importance is None else calibrate_importance
    fit_options = {"ridge": ridge, "seed": seed}
    calib_set, scoring = scoring_for(
        analysis,
        calib,
        calib_count,
        seed,
        preprocess,
        calibrate=cal_imp,
        fit_options=fit_options,
        distortion_fn=distortion_fn,
        progress=progress,
    )
    built = build_problem(analysis, the_kind, be, calib_set, scoring, cache_dir, progress)
    log = list(built.log)

    timed, shapes = analysis.timing(be.batch)
    bars: list[tqdm] = []  # made at the first plan measured: no empty bar before an error
    built_plans: dict = {}  # the last plan built
    table = LatencyTable(cache_dir, be)  # one reference timing for the run's pairs

    def key(selection: Selection) -> str:  # the plan's candidates, as text
        return json.dumps([the_kind.key(c) for c in selection.items])

    def measure(selection: Selection) -> Measured:
        if not bars:
            bars.append(tqdm(total=tries, desc="measuring plans", unit="plan", leave=False,
                             disable=not progress))  # fmt: skip
        new = selection.items not in built_plans  # a plan measured again is not rebuilt
        if new:
            built_plans.clear()
            built_plans[selection.items] = build(analysis, the_kind, selection.items)
        out, refits = built_plans[selection.items]
        what = "plan " + key(selection)
        a_ms, b_ms, cached = table.compare(  # measured again in this run: fresh
            timed, out, shapes, analysis.sha256, what, built.covered_ms, fresh=not new
        )
        bars[0].update(int(new))
        return Measured(a_ms, b_ms, (out, refits), cached)

    try:
        found = search(
            built.problem.solve,
            built.problem.fastest(),
            measure,
            speedup=target,
            input_ms=built.input_ms,
            remainder_ms=built.remainder_ms,
            unchanged_ms=built.unchanged_ms,
            tries=tries,
            log=log,
            backend=backend,
            start=remembered_start(memory.get(), built.unchanged_ms, built.problem.solve, key),
        )
    finally:
        for handle in [*bars, table]:
            handle.close()
    if built.unchanged_ms > 0:  # a fraction of the unchanged network: follows the table's load
        memory.put({"fraction": found.budget / built.unchanged_ms, "plan": key(found.selection)})
    if not found.measured.cached:  # the input as timed beside the plan kept joins the pool
        with table:
            ms, digest = found.measured.input_ms, analysis.sha256 or None
            table.put_network(timed, shapes, built.covered_ms, built.input_key, ms, digest, True)
    out, refits = found.measured.built
    # The refit fits on half the calibration sources, the report scores the other (as importance).
    fit_feeds, held = _split(scoring.feeds, scoring.groups)
    fits: list[GroupFit] = []
    if calibrate:
        out, fits = _calibrate(analysis, out, refits, fit_feeds, fit_options, log, progress)
    sel = found.selection
    plan = Plan(
        the_kind.method or method,
        backend,
        None if math.isinf(target) else target,
        found.budget,
        sel.latency + built.remainder_ms,
        found.measured.input_ms,
        found.measured.output_ms,
        fingerprint=be.fingerprint(),
        prune=kind,
        **the_kind.record(analysis, sel, built.latency, built.importance),
        **provenance(analysis, calib, len(scoring.feeds), seed, preprocess),
    )
    items, tables = tuple(getattr(i, "segment", i) for i in sel.items), built.tables
    return CompressResult(
        out, plan, len(built.candidates), tables.signatures, tables.hits, tables.new,
        found.tries, log, items, fits, built.importance_hits, analysis, the_kind,
        functools.partial(summarize, analysis, out), analysis.model, (fit_feeds, held), scored,
    )  # fmt: skip


def _kind_options(settings: dict) -> dict:
    """The options of the kind `settings["kind"]` among compress's arguments."""
    if settings["kind"] == "width":
        return {
            "align": settings["width_align"],
            "min_width": settings["min_width"],
            "importance": settings["width_importance"],
            "search": settings["width_search"],
            "selection": settings["width_selection"],
        }
    return {k: settings[k] for k in ("method", "max_kernel", "candidate_filter", "units")}


def _calibrate(
    analysis: Analysis,
    out: onnx.ModelProto,
    refits: dict,
    feeds: list[dict],
    fit_options: dict,
    log: list[str],
    progress: bool = False,
) -> tuple[onnx.ModelProto, list[GroupFit]]:
    """Refit the new convs of `out` toward the original's tensors (calibration.network)."""
    # The refit changes weights only, not geometry: latencies measured before it stand.
    clock = time.perf_counter()
    kept = {k: r.kept_out for k, r in refits.items()}
    lost = {k: r.lost for k, r in refits.items() if r.lost is not None}  # width pruning
    out, fits = refit_merged(analysis.reference, out, kept, feeds, fit_options, progress, lost=lost)
    check_runs(out)
    moved = f", {counted(len(lost), 'bias', 'biases')} took the mean of removed inputs"
    log.append(f"calibrated {counted(len(fits), 'new conv')} ({sum(f.fitted for f in fits)} "
               f"refit){moved if lost else ''} in {time.perf_counter() - clock:.1f} s")  # fmt: skip
    return out, fits


def from_plan(
    model: ModelLike,
    plan: Plan,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    calib: Source = None,
    calib_count: int = 16,
    eval_data: Source = None,
    eval_count: int = 32,
    preprocess: str | Preprocess | None = None,
    calibrate: bool = True,
    ridge: float = 1e-2,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
    kind: str = "depth",
    keep: Sequence[str] = (),
    seed: int = 0,
) -> CompressResult:
    """Rebuild a saved plan on `model` (no latency table, importance or solve) and measure it.

    `plan` is a Plan; the other arguments are as in `compress` (`preprocess` None: the
    plan's, else "torch").
    Returns a CompressResult whose plan carries the new measurement. Raises OnnxMergeError
    when the plan does not fit the model (its chains are found by name).
    """
    settings = dict(locals())
    settings["preprocess"] = preprocess = preprocess_from(
        preprocess or plan.calibration.get("preprocess"))  # fmt: skip
    kind = plan.prune or kind
    if kind == "both":
        from onnxmerge.both import from_plan_both

        return from_plan_both(from_plan, settings)
    analysis = analyze(model, input_shapes, external_data_dir, keep, lift=kind == "depth")
    scored = deferred(analysis.model, settings)
    options = {"method": plan.method or "layermerge"} if kind == "depth" else {}
    the_kind = get_kind(kind, **options)
    items = the_kind.from_record(analysis, plan)
    be = get_backend(backend, **(backend_options or {}))
    out, refits = build(analysis, the_kind, items)
    timed, shapes = analysis.timing(be.batch)
    t_a, t_b = compare_models(timed, out, be, shapes)
    changed = sum(g.changed for g in plan.groups) + sum(g.width < g.channels for g in plan.width)
    calib_set = calibration_set(analysis.model, calib, calib_count, seed, preprocess)
    log = [
        calib_set.about,
        f"rebuilt the plan ({changed} changed groups); measured {t_b.median_ms:.3f} ms vs "
        f"{t_a.median_ms:.3f} ms = {t_a.median_ms / t_b.median_ms:.3f}x",
    ]
    fit_feeds, held = _split(calib_set.feeds, calib_set.groups)
    fits: list[GroupFit] = []
    if calibrate:
        fit_options = {"ridge": ridge, "seed": seed}
        out, fits = _calibrate(analysis, out, refits, fit_feeds, fit_options, log)
    new_plan = replace(
        plan,
        backend=backend,
        measured_input_ms=t_a.median_ms,
        measured_output_ms=t_b.median_ms,
        fingerprint=be.fingerprint(),
        **provenance(analysis, calib, len(calib_set.feeds), seed, preprocess),
    )
    return CompressResult(
        out, new_plan, 0, 0, 0, 0, 1, log, tuple(items), fits, 0, analysis, the_kind,
        functools.partial(summarize, analysis, out), analysis.model, (fit_feeds, held), scored,
    )  # fmt: skip


def _split(feeds: list[dict], groups: list[int]) -> tuple[list[dict], list[dict]]:
    """(feeds to fit the refit on, feeds held out for the report): half the calibration
    sources each (importance.holdout_split); all to fit when there is nothing to hold out."""
    fit_idx, held_idx = holdout_split(groups)
    held = [feeds[i] for i in held_idx]
    return ([feeds[i] for i in fit_idx] if held else feeds), held
