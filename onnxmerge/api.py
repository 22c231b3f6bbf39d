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
    trained = om.distill("out.onnx", "model.onnx", ["photos/"], "trained.onnx", minutes=10)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxmerge.analysis import ModelLike, analyze, load, source_digest
from onnxmerge.compress import CompressResult, compress, parse_speedup
from onnxmerge.compress import from_plan as _from_plan
from onnxmerge.errors import OnnxMergeError
from onnxmerge.fuse import FuseReport, GroupError, fuse
from onnxmerge.inspection import inspect_report
from onnxmerge.outputs import check_outputs, write_all
from onnxmerge.plan import Plan

__all__ = [
    "CompressResult",
    "FuseReport",
    "GroupError",
    "ModelLike",
    "ProfileReport",
    "analyze",
    "check_data",
    "check_outputs",
    "compress",
    "default_plan_path",
    "distill",
    "distill_result",
    "eval_inputs",
    "from_plan",
    "fuse",
    "inspect",
    "load",
    "parse_speedup",
    "profile",
    "quantize_result",
    "time_apart",
    "write_result",
]

PathLike = str | os.PathLike


def from_plan(model: ModelLike, plan: Plan | PathLike, **options) -> CompressResult:
    """compress.from_plan, with `plan` a Plan or the path of its JSON file (OnnxMergeError for
    a missing or malformed file); `options` as compress.from_plan takes them."""
    return _from_plan(model, plan if isinstance(plan, Plan) else Plan.load(plan), **options)


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
    return inspect_report(analyze(model, input_shapes, external_data_dir, keep, lift=True))


def groups(
    model: ModelLike,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: PathLike | None = None,
    keep: Sequence[str] = (),
    align: int | str | None = None,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    cache_dir: PathLike | None = None,
) -> dict:
    """The channel dependency groups of `model` (what width pruning removes together), as a
    JSON-ready dict: "groups", "prunable", "channels" (prunable channels), "align",
    "align_source" and "list" (per group: id, width, members [tensor, start, end, unit],
    producers and consumers [node, offset], ties, prunable, reason).

    `align`, the channel alignment (a group narrower than twice it is fixed): an int as given;
    "auto" probes `backend` as compress does (staircase.probe_alignment, timing what the
    cache in `cache_dir` lacks); None (default) takes compress's probe from the cache when it
    holds one and times nothing, else 1. Raises OnnxMergeError for a bad model or backend."""
    from onnxmerge.kinds.width.groups import channel_groups, groups_report

    graph = analyze(model, input_shapes, external_data_dir, keep).graph
    source = "given"
    if align is None or align == "auto":
        from onnxmerge.latency import LatencyTable, get_backend
        from onnxmerge.latency.staircase import probe_alignment

        be = get_backend(backend, **(backend_options or {}))
        table, probed = LatencyTable(cache_dir, be), None
        if align == "auto" or table.path.exists():  # the default creates no cache
            with table:
                probed = probe_alignment(table, cached_only=align is None)
        source = f"probed on {be.name}" + (" (cached)" if align is None else "")
        if probed is None:
            probed, source = 1, f"not probed on {be.name} yet"
        align = probed
    return groups_report(channel_groups(graph, int(align)), int(align), source)


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

    analysis = analyze(model, input_shapes, external_data_dir, keep, lift=True)
    kind = get_kind("depth", max_kernel=max_kernel)
    be = get_backend(backend, **(backend_options or {}))
    with LatencyTable(cache_dir, be) as table:
        tables = latency_table(kind, kind.candidates(analysis), table, progress, refresh)
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


def plan_preprocess(plan: PathLike | None, student: PathLike | None = None):
    """How the images of a compression were prepared (calibration.preprocess.Preprocess): as
    `plan` records, else as the plan beside `student` (default_plan_path) records, else
    "torch". A plan that cannot be read counts as none here (--plan reports it later)."""
    from onnxmerge.calibration.preprocess import preprocess_from

    path = plan or (student and default_plan_path(student))
    try:
        return preprocess_from(Plan.load(path).calibration.get("preprocess") if path else None)
    except (OnnxMergeError, OSError, ValueError, AttributeError):
        return preprocess_from(None)


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


def check_data(data: Sequence[PathLike], flag: str = "--data", options: dict | None = None) -> None:
    """Raise OnnxMergeError unless every training-data path exists and is a folder or .npz,
    PyTorch (which distillation trains with) is installed, and distill()'s keyword `options`
    (if given) can train: a budget, positive numbers, a known augment (distill.check_options)."""
    from onnxmerge.augment import check_data as check
    from onnxmerge.torch_graph import _torch

    check(data, flag)
    _torch()
    if options is not None:
        from onnxmerge.distill import check_options

        check_options(**options)


def eval_inputs(
    model: ModelLike,
    data: Sequence[PathLike],
    count: int = 32,
    *,
    input_shapes: dict | None = None,
    external_data_dir: PathLike | None = None,
    preprocess=None,
) -> list[dict]:
    """Up to `count` feeds (batch 1) of `data` (folders of images or .npz files, read as
    `--calib` reads them, images prepared as `preprocess` says: calibration.preprocess) for
    `model`'s single input, to score a network on data no step of onnxmerge saw (`--eval`;
    summary.fidelity scores). Raises OnnxMergeError for bad data."""
    from onnxmerge.calibration.evaluation import evaluation_set
    from onnxmerge.calibration.preprocess import preprocess_from

    if not data:
        raise OnnxMergeError("--eval: give a folder of images or an .npz of input arrays")
    m = load(model, input_shapes, external_data_dir)
    found = evaluation_set(m, None, 0, 0, data, count, preprocess_from(preprocess))
    return found.feeds  # data given: never None


def distill(
    student: ModelLike,
    teacher: ModelLike,
    data: Sequence[PathLike] | None = None,
    output: PathLike | None = None,
    *,
    plan: Plan | PathLike | None = None,
    input_shapes: dict | None = None,
    external_data_dir: PathLike | None = None,
    **options,
):
    """Train `student` toward `teacher` on `data` (onnxmerge.distill.distill; needs torch) and
    write the result to `output` if given (atomically; checked before any work). `plan`: the
    student is that plan's fine-tune graph, fused with it at the end. `input_shapes`
    ({name: shape}) gives the single input's shape where the teacher's is dynamic; the
    written model keeps the student's own. Returns DistillResult."""
    from onnxmerge.distill import distill as run
    from onnxmerge.graph import with_input_shapes
    from onnxmerge.graph.save import write_model

    if output is not None:
        extra = [p for p in (teacher, plan) if isinstance(p, str | os.PathLike)]
        check_outputs(student, [output], external_data_dir, extra)
    if plan is not None and not isinstance(plan, Plan):
        plan = Plan.load(plan)
    s = load(student, None, external_data_dir)  # written back as it is: dims stay dynamic
    t = load(teacher, None, external_data_dir)
    made_from = (plan.source or {}).get("sha256") if plan is not None else None
    if made_from and made_from != source_digest(teacher):
        raise OnnxMergeError(
            "the plan was made from another model than the teacher (its source sha256 "
            f"{made_from[:12]}... differs): pass the plan written with this student"
        )
    if input_shapes:
        shape = tuple(next(iter(input_shapes.values())))
        for m in (s, t):  # a shape that conflicts with a fixed dim: its error, before training
            inits = {i.name for i in m.graph.initializer}
            names = [i.name for i in m.graph.input if i.name not in inits]
            with_input_shapes(m, dict.fromkeys(names[:1], shape))
        options.setdefault("input_shape", shape[1:])
    result = run(s, t, data, plan=plan, **options)
    if output is not None:
        write_all([(output, lambda tmp: write_model(result.model, tmp, Path(output)))])
    return result


def time_apart(
    models: Sequence[ModelLike], input_shapes: dict | None = None, backend: str = "ort-cpu"
) -> list[float]:
    """Median latencies (ms) of `models` measured interleaved in a fresh process
    (latency.apart: safe after torch trained here). Inputs: `input_shapes`, else the first
    model's, a dynamic batch as 1 (one input: its shape for every model's input)."""
    from onnxmerge.latency.apart import measure_apart

    loaded = [load(m) for m in models]
    if not input_shapes:  # None, or {} (the CLI's parse of no --input-shape)
        inits = {t.name for t in loaded[0].graph.initializer}
        input_shapes = {
            i.name: [
                d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim
            ]
            for i in loaded[0].graph.input
            if i.name not in inits
        }
    if len(input_shapes) == 1:  # one input: the same shape whatever each model names it
        (shape,) = input_shapes.values()
        for m in loaded:
            inits = {t.name for t in m.graph.initializer}
            names = [i.name for i in m.graph.input if i.name not in inits]
            input_shapes = {**input_shapes, **dict.fromkeys(names[:1], shape)}
    return measure_apart(loaded, backend, shapes=input_shapes)


def quantize_result(result: CompressResult) -> list:
    """Quantize `result.model` to INT8 (onnxmerge.quantize: ONNX Runtime static QDQ) on the
    calibration inputs compress fit on, put it in `result` (what write_result writes; the
    plan still describes the float compression), and add the INT8 report to its summary:
    the compressed network, it quantized and the input quantized alone, timed against the
    original and scored on the summary's inputs (`result.scored`). Returns the report's
    quantize.Int8Row list. Raises OnnxMergeError when ONNX Runtime cannot quantize either
    network."""
    from dataclasses import asdict

    from onnxmerge.quantize import int8_rows, quantize_int8

    fit, held = result.feeds
    fit = list(fit or held)
    if result.original is None or not fit:
        raise OnnxMergeError("INT8 needs the compress result's input and calibration inputs")
    quantized = quantize_int8(result.model, fit)
    nets = {"onnxmerge": result.model, "onnxmerge + INT8": quantized,
            "INT8 alone": quantize_int8(result.original, fit)}  # fmt: skip
    ms = time_apart([result.original, *nets.values()])
    rows = int8_rows(result.original, nets, ms, result.scored.feeds, quantized)
    result.model = quantized
    if result.table is not None:
        result.table.int8 = [asdict(r) for r in rows]
    return rows


def distill_result(
    result: CompressResult,
    teacher: ModelLike,
    data: Sequence[PathLike] | None = None,
    *,
    input_shapes: dict | None = None,
    external_data_dir: PathLike | None = None,
    **options,
):
    """Distill `result.model` from `teacher` (compress's input) and put the trained network in
    `result` (same structure, so its measured latencies stand); its summary's fidelity is
    measured again, on the `--eval` inputs if compress had them, else on distillation's
    held-out views (it may train on the built-in photos). Returns the DistillResult."""
    from onnxmerge.calibration.evaluation import EVAL, EvaluationSet
    from onnxmerge.calibration.preprocess import preprocess_from
    from onnxmerge.summary import fidelity

    options.setdefault("width", result.plan.width if result.plan is not None else ())
    if result.plan is not None:  # images prepared as compress prepared them
        options.setdefault("preprocess", preprocess_from(result.plan.calibration.get("preprocess")))
    d = distill(
        result.model,
        teacher,
        data,
        input_shapes=input_shapes,
        external_data_dir=external_data_dir,
        **options,
    )
    result.model = d.model
    result.log.extend(d.lines())
    scored = result.scored  # --eval data stays unseen; built-in photos may be trained on
    if d.held_out and scored.on != EVAL:
        scored = EvaluationSet(d.held_out, "held-out views")
    if result.table is not None and scored.feeds:
        t = load(teacher, None, external_data_dir)
        result.table.fidelity = fidelity(t, d.model, scored.feeds)
        result.table.fidelity_inputs = len(scored.feeds)
        result.table.fidelity_on = f"{scored.on}, after distillation"
    result.scored = scored  # --int8's rows score there too
    return d
