"""The public Python API: compress, from_plan, fuse, inspect, profile (and write_result).

Each takes a model (a path to an .onnx file, or an onnx.ModelProto) and plain options, and
returns a plain result object; nothing is written unless asked, and files are written
atomically, only after every check passed. Every user-caused failure (a bad file, an
impossible target, a plan that does not fit) raises onnxmerge.errors.OnnxMergeError with a
one-line message; anything else is a bug.

    import onnxmerge.api as om
    res = om.compress("model.onnx", 1.5)                  # CompressResult
    om.write_result(res, "out.onnx", finetune_graph="ft.onnx")
    fused, report = om.fuse("ft_trained.onnx", "deploy.onnx", plan="out.plan.json")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxmerge import compress as _compress
from onnxmerge import fuse as _fuse
from onnxmerge.analysis import ModelLike, analyze, load
from onnxmerge.compress import CompressResult, parse_speedup
from onnxmerge.fuse import FuseReport, GroupError
from onnxmerge.inspection import inspect_report
from onnxmerge.outputs import check_outputs, write_all
from onnxmerge.plan import Plan
from onnxmerge.problem import DistortionFn

__all__ = [
    "CompressResult",
    "FuseReport",
    "GroupError",
    "ModelLike",
    "ProfileReport",
    "analyze",
    "check_outputs",
    "compress",
    "default_plan_path",
    "from_plan",
    "fuse",
    "inspect",
    "load",
    "parse_speedup",
    "profile",
    "write_result",
]

PathLike = str | os.PathLike


def compress(
    model: ModelLike,
    speedup: float | str,
    *,
    method: str = "layermerge",
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    calib: PathLike | None = None,
    calib_count: int = 16,
    calibrate: bool = True,
    calibrate_importance: bool | None = None,
    ridge: float = 1e-2,
    cache_dir: PathLike | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: PathLike | None = None,
    max_kernel: int = 7,
    units: int = 1000,
    tries: int = 4,
    progress: bool = True,
    distortion_fn: DistortionFn | None = None,
    candidate_filter: Callable | None = None,
    keep: Sequence[str] = (),
    seed: int = 0,
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
            with an integer `groups` array), or None for the built-in photos (or smooth
            random fields for inputs that are not images).
        calib_count: calibration inputs to use (default 16).
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

    Returns:
        CompressResult: `.model` (ModelProto), `.plan` (Plan; JSON via `.to_json()`), counts,
        `.log`, `.summary()` lines; `.finetune_graph()` builds the fine-tune form.

    Raises:
        OnnxMergeError: a bad model or option, no mergeable chain, a target out of reach or
            not reached (nothing is returned then).
    """
    return _compress.compress(
        model,
        speedup,
        method=method,
        backend=backend,
        backend_options=backend_options,
        calib=calib,
        calib_count=calib_count,
        calibrate=calibrate,
        calibrate_importance=calibrate_importance,
        ridge=ridge,
        cache_dir=cache_dir,
        input_shapes=input_shapes,
        external_data_dir=external_data_dir,
        max_kernel=max_kernel,
        units=units,
        tries=tries,
        progress=progress,
        distortion_fn=distortion_fn,
        candidate_filter=candidate_filter,
        keep=keep,
        seed=seed,
    )


def from_plan(
    model: ModelLike,
    plan: Plan | PathLike,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    calib: PathLike | None = None,
    calib_count: int = 16,
    calibrate: bool = True,
    ridge: float = 1e-2,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: PathLike | None = None,
    keep: Sequence[str] = (),
    seed: int = 0,
) -> CompressResult:
    """Rebuild a saved plan on `model` (no latency table, importance or solve) and measure it.

    `plan` is a Plan or the path of its JSON file; the other arguments are as in `compress`.
    Returns a CompressResult whose plan carries the new measurement. Raises OnnxMergeError
    when the plan does not fit the model (its chains are found by name).
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    return _compress.from_plan(
        model,
        plan,
        backend=backend,
        backend_options=backend_options,
        calib=calib,
        calib_count=calib_count,
        calibrate=calibrate,
        ridge=ridge,
        input_shapes=input_shapes,
        external_data_dir=external_data_dir,
        keep=keep,
        seed=seed,
    )


def fuse(
    model: ModelLike,
    output: PathLike | None = None,
    direct: bool = False,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    plan: Plan | PathLike | None = None,
    external_data_dir: PathLike | None = None,
    keep: Sequence[str] = (),
    all_runs: bool = True,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = True,
) -> tuple[onnx.ModelProto, FuseReport]:
    """Merge activation-free conv runs of `model` into single Convs, verified.

    Without `plan`: every run that merges exactly everywhere (`direct=True`: also those exact
    only in the interior, with the border error measured). With `plan` (a Plan or its JSON
    path), `model` is that plan's fine-tune graph (trained or not) and exactly the plan's
    groups are merged. The result is compared with `model` under ONNX Runtime on random
    inputs (FuseReport.outputs, per group interior/border errors). Writes `output` if given.
    `keep` names nodes and tensors no merge may touch (see `compress`). With
    `all_runs=False` (the CLI's default) each run is split into only the merges `backend`
    runs faster, timed into the latency cache (`cache_dir`), and the result is timed against
    the input end to end (FuseReport.summary).

    Raises OnnxMergeError for a bad model, a plan that does not fit, or a result that is
    claimed exact but measured otherwise (nothing is written then).
    """
    return _fuse.fuse(
        model,
        output,
        direct,
        input_shapes,
        plan,
        external_data_dir,
        keep,
        all_runs,
        backend,
        backend_options,
        cache_dir,
        progress,
    )


def inspect(
    model: ModelLike,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: PathLike | None = None,
    keep: Sequence[str] = (),
) -> dict:
    """The conv chains onnxmerge finds in `model`, as a JSON-ready dict.

    Keys: "chains" (per chain: positions with conv geometry and activation, residuals,
    breaks with reasons, valid segment count), "unmatched" (convs in no chain, with why),
    "total". Raises OnnxMergeError for a bad model.
    """
    return inspect_report(analyze(model, input_shapes, external_data_dir, keep))


@dataclass
class ProfileReport:
    """What `profile` timed: candidate convs (distinct ones), cache hits and new
    measurements, the cache file, the model end to end and the sum of its chain convs (ms)."""

    candidates: int
    signatures: int
    hits: int
    new: int
    cache: Path
    backend: str
    model_ms: float
    covered_ms: float


def profile(
    model: ModelLike,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    cache_dir: PathLike | None = None,
    max_kernel: int = 7,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: PathLike | None = None,
    progress: bool = True,
    refresh: bool = False,
    keep: Sequence[str] = (),
) -> ProfileReport:
    """Time every candidate conv of `model` on `backend` into the latency cache.

    The same candidates `compress` builds (all LayerMerge variants up to `max_kernel`), so a
    later `compress` on this backend times nothing new. `refresh` re-measures every one
    (a cache filled on a busy machine). Raises OnnxMergeError for a bad model or backend.
    """
    from onnxmerge.kinds import get_kind
    from onnxmerge.latency import LatencyTable, get_backend, time_model
    from onnxmerge.problem import latency_table

    analysis = analyze(model, input_shapes, external_data_dir, keep)
    kind = get_kind("depth", max_kernel=max_kernel)
    be = get_backend(backend, **(backend_options or {}))
    tables = latency_table(kind, kind.candidates(analysis), be, cache_dir, progress, refresh)
    covered = sum(tables.latency[c] for c in tables.candidates if kind.unchanged(c))
    timed, shapes = analysis.timing(be.batch)
    total = time_model(timed, be, shapes)
    return ProfileReport(
        len(tables.candidates),
        tables.signatures,
        tables.hits,
        tables.new,
        LatencyTable(cache_dir, be).path,
        be.name,
        total.median_ms,
        covered,
    )


def default_plan_path(output: PathLike) -> Path:
    """Where a model's plan goes unless told: OUTPUT with the suffix .plan.json."""
    return Path(str(Path(output).with_suffix("")) + ".plan.json")


def write_result(
    result: CompressResult,
    output: PathLike,
    plan_path: PathLike | None = None,
    finetune_graph: PathLike | None = None,
) -> Path:
    """Write the compressed model, its plan (default: default_plan_path) and, if asked, the
    fine-tune graph: all or nothing (outputs.write_all). Returns the plan's path."""
    from onnxmerge.graph.save import write_model

    plan_path = Path(plan_path) if plan_path is not None else default_plan_path(output)
    writers = [
        (output, lambda tmp: write_model(result.model, tmp, Path(output))),
        (plan_path, lambda tmp: result.plan.save(tmp)),
    ]
    if finetune_graph is not None:
        ft = result.finetune_graph()
        writers.append((finetune_graph, lambda tmp: write_model(ft, tmp, Path(finetune_graph))))
    write_all(writers)
    return plan_path
