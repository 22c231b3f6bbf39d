"""`onnxmerge fuse`: merge activation-free conv runs (or exactly a plan's groups), verified.

By default only merges that are exact everywhere are made (the fine-tune form: no padding
after a group's first conv); `direct=True` also merges runs whose later convs pad (exact in
the interior only, compose.border_width gives the band). With `all_runs=False` (the CLI's
default) each activation-free run is split into the merges the backend runs faster, timed
like compress's latency table (a merge can cost more than it saves: a depthwise 3x3 with a
pointwise 1x1 becomes a dense 3x3). With a plan, exactly its groups of its fine-tune graph
are merged.

Every result is verified with ONNX Runtime on random inputs before it is written:
- each merged conv alone, fed the input network's own tensor at its group input, against the
  input network's tensor at its group output (so an error upstream does not count against a
  group): in the interior, and on the border band where the merge is not exact;
- every graph output: the same shape as the input's, and within OUTPUT_TOLERANCE (float32
  rounding through the rest of the network stays far below it).
Where fuse claims exactness (every group's interior; the border of an exact group) and the
measured error exceeds GROUP_TOLERANCE, or an output fails its check, fuse refuses
(OnnxMergeError; nothing is written). Both tolerances are HALF_SCALE times wider for float16
or bfloat16 weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmerge.analysis import ModelLike, analyze
from onnxmerge.calibration.capture import apply_conv
from onnxmerge.compose import border_width
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import save_model
from onnxmerge.graph.conv import read_linear_proto
from onnxmerge.graph.load import with_input_shapes
from onnxmerge.kinds.depth.candidates import signature
from onnxmerge.kinds.depth.cover import fusable_segments, fuse_segments, plan_segments
from onnxmerge.kinds.depth.kind import apply_segments
from onnxmerge.kinds.depth.segments import rewrites_nothing, segment_io, segment_parts
from onnxmerge.latency import LatencyTable, compare_models, get_backend
from onnxmerge.plan import Plan
from onnxmerge.runtime import Difference, difference, random_inputs, run
from onnxmerge.summary import Summary, model_stats

GROUP_TOLERANCE = 1e-4  # one merged conv vs its group, float32: ~1e-6 relative
OUTPUT_TOLERANCE = 1e-2  # a whole network after exact merges: float32 rounding only
HALF_SCALE = 50  # float16 weights (machine epsilon 9.8e-4, float32's 1.2e-7): a merged conv
# rounds its composed kernel once where its group rounded after each conv (measured 5e-4-1e-3)


def _tolerances(model: onnx.ModelProto) -> tuple[float, float]:
    """(GROUP_TOLERANCE, OUTPUT_TOLERANCE), scaled for a model with 16-bit float weights."""
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    scale = HALF_SCALE if any(t.data_type in half for t in model.graph.initializer) else 1
    return GROUP_TOLERANCE * scale, OUTPUT_TOLERANCE * scale


@dataclass
class GroupError:
    """How far one merged group's output moved: in the interior and on its border band."""

    tensor: str
    interior: Difference
    border: Difference | None  # None when the merge is exact everywhere by construction


@dataclass
class FuseReport:
    """What `fuse` merged and how far the outputs moved (ONNX Runtime, random inputs)."""

    merged_groups: int
    convs_before: int
    convs_after: int
    outputs: dict[str, Difference]
    groups: list[GroupError] = field(default_factory=list)
    # direct-cover segments (activation-free runs) with a conv left unmerged as not exact
    skipped_inexact: int = 0
    summary: Summary | None = None  # before -> after (counts; latency when timed)

    @property
    def max_rel(self) -> float:
        """Largest relative difference over the graph outputs."""
        return max((d.max_rel for d in self.outputs.values()), default=0.0)


def _skipped_inexact(direct: list, exact: list) -> int:
    """Segments of the direct cover with a conv that no merge of the exact cover touches."""
    merged = {(s.chain, p) for s in exact for p in range(s.start + 1, s.end + 1)}
    return sum(
        any((s.chain, p) not in merged for p in range(s.start + 1, s.end + 1)) for s in direct
    )


def _count_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


def _band_mask(shape, band) -> np.ndarray:
    t, l, b, r = band
    mask = np.zeros(shape[-2:], bool)
    mask[: min(t, shape[-2]), :] = True
    mask[:, : min(l, shape[-1])] = True
    if b:
        mask[-b:, :] = True
    if r:
        mask[:, -r:] = True
    return mask


def _costs(m, direct: bool, backend, cache_dir, progress: bool) -> dict:
    """Table latency (ms) of every fusable segment's merged conv (single convs too)."""
    segs = fusable_segments(m, direct)
    sigs = {seg: signature(m.chains[seg.chain].chain, seg.start, seg.end, seg.kept) for seg in segs}
    with LatencyTable(cache_dir, backend) as table:
        ms = table.measure_all(list(sigs.values()), progress=progress, in_network=True)
    return {seg: ms[sig] for seg, sig in sigs.items()}


def _group_errors(analysis, fused: onnx.ModelProto, groups: list, feeds: dict) -> list:
    """Per merged conv: its output alone, on the input network's own group input, against the
    input network's group output (interior, and border band where the merge is not exact)."""
    tensors = [name for _, src, dst, _ in groups for name in (src, dst)]
    ref = run(analysis.model, feeds, tensors)
    inits = {t.name: t for t in fused.graph.initializer}
    errors = []
    for node_name, src, dst, band in groups:
        node = next(n for n in fused.graph.node if n.name == node_name)
        a = ref[dst]
        b = apply_conv(read_linear_proto(node, inits), ref[src])
        if a.shape != b.shape:
            raise OnnxMergeError(
                f"the merged conv {node_name!r} gives shape {b.shape} for {dst!r} of shape "
                f"{a.shape}; refusing to write the model (please report it)"
            )
        mask = np.broadcast_to(_band_mask(a.shape, band), a.shape)
        errors.append(
            GroupError(
                dst,
                difference(a[~mask], b[~mask]),
                difference(a[mask], b[mask]) if any(band) else None,
            )
        )
    return errors


def _check(report: FuseReport, ref: dict, got: dict, tolerances: tuple[float, float]) -> None:
    """Refuse what is claimed exact but measured otherwise (see the module docstring)."""
    group_tolerance, output_tolerance = tolerances
    for name in ref:
        if np.shape(ref[name]) != np.shape(got[name]):
            raise OnnxMergeError(
                f"the fused model's output {name!r} has shape {np.shape(got[name])}, the "
                f"input's {np.shape(ref[name])}; refusing to write it (please report the model)"
            )
    for g in report.groups:
        bad = g.interior.max_rel > group_tolerance
        if bad:
            raise OnnxMergeError(
                f"the merge writing {g.tensor!r} differs from the convs it replaces by rel "
                f"{g.interior.max_rel:.3g} where it is exact by construction; refusing to write "
                "the model (please report it)"
            )
    exact = all(g.border is None for g in report.groups)
    if exact and report.max_rel > output_tolerance:
        worst = max(report.outputs, key=lambda k: report.outputs[k].max_rel)
        raise OnnxMergeError(
            f"the fused model's output {worst!r} moved by rel {report.max_rel:.3g} under ONNX "
            "Runtime although every merge is exact by construction; refusing to write it "
            "(please report the model)"
        )


def fuse(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    direct: bool = False,
    input_shapes: dict | None = None,
    plan: Plan | str | os.PathLike | None = None,
    external_data_dir: str | os.PathLike | None = None,
    keep: Sequence[str] = (),
    all_runs: bool = True,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
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
    if plan is not None and not isinstance(plan, Plan):
        plan = Plan.load(plan)
    analysis = analyze(model, input_shapes, external_data_dir, keep, lift=True)
    m = analysis.match
    be = None if all_runs and plan is None else get_backend(backend, **(backend_options or {}))
    if plan is not None:
        segments, skipped = plan_segments(m, plan.groups, direct=direct), 0
    else:
        cost = None if all_runs else _costs(m, direct, be, cache_dir, progress)
        segments = fuse_segments(m, direct=direct, cost=cost)
        skipped = 0 if direct else _skipped_inexact(fuse_segments(m, direct=True), segments)
    fused, nodes = analysis.rewrite(
        lambda g, mm, names: apply_segments(g, mm, segments, "merged", names)
    )
    groups = []  # (new conv, group input, group output, border band) per rewritten segment
    rewritten = [seg for seg in segments if not rewrites_nothing(m.chains[seg.chain], seg)]
    for seg, node in zip(rewritten, nodes, strict=True):
        mc = m.chains[seg.chain]
        src, dst = (t.name for t in segment_io(mc, seg.start, seg.end))
        groups.append((node.name, src, dst, border_width(*segment_parts(mc, seg))))
    feeds = random_inputs(analysis.model)
    ref, got = run(analysis.model, feeds), run(fused, feeds)
    outputs = {
        o.name: difference(ref[o.name], got[o.name])
        if np.shape(ref[o.name]) == np.shape(got[o.name])
        else Difference(float("inf"), float("inf"))
        for o in analysis.model.graph.output
    }
    report = FuseReport(
        len(nodes),
        _count_convs(analysis.model),
        _count_convs(fused),
        outputs,
        _group_errors(analysis, fused, groups, feeds),
        skipped,
    )
    _check(report, {k: ref[k] for k in outputs}, {k: got[k] for k in outputs},
           _tolerances(analysis.model))  # fmt: skip
    before_ms = after_ms = None
    if be is not None:
        timed, shapes = analysis.timing(be.batch)
        t_a, t_b = compare_models(timed, fused, be, shapes)
        before_ms, after_ms = t_a.median_ms, t_b.median_ms
    report.summary = Summary(
        model_stats(analysis.model),
        model_stats(with_input_shapes(fused, analysis.input_shapes)),
        be.name if be is not None else "",
        before_ms,
        after_ms,
    )
    if output is not None:
        save_model(fused, output)
    return fused, report
