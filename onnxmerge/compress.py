"""compress(): the main job, end to end.

load -> normalize -> match -> candidates -> latency table (measured on the backend) and
importance table (ONNX Runtime on calibration inputs) -> solve under the latency budget ->
rewrite -> verify -> measure input and output end to end, interleaved. If the measured speedup
falls short of the target, the conv budget is cut by the shortfall and the DP solves again
(bounded tries). The budget for the DP is the target latency minus the part of the network
the chains do not cover (measured input latency minus the table latencies of its convs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmerge.api import ModelLike, analyze, check_runs, load
from onnxmerge.candidates import Candidate, enumerate_candidates
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import save_model
from onnxmerge.graph.ir import conv_weight
from onnxmerge.importance import (
    DistortionFn,
    Scorer,
    calibration_inputs,
    importance_table,
    swap_segment,
)
from onnxmerge.latency import LatencyTable, compare_models, get_backend, time_model
from onnxmerge.passes.merge_group import segment_io, segment_linear
from onnxmerge.plan import Plan, PlanGroup
from onnxmerge.rewrite import apply_choices, export
from onnxmerge.solve import Entry, InfeasibleBudget, min_latency, solve

NOISE = 0.03  # measured speedups within 3% of the target count as reaching it


@dataclass
class CompressResult:
    model: onnx.ModelProto
    plan: Plan
    candidates: int
    signatures: int
    latency_hits: int
    latency_new: int
    tries: int
    log: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)  # chain index -> [(start, end, kept)]


def _build(
    proto: onnx.ModelProto, choices: dict, form: str, input_shapes: dict | None
) -> onnx.ModelProto:
    _, graph, m = analyze(proto, input_shapes)
    apply_choices(graph, m, choices, form=form)
    out = export(graph, proto)
    check_runs(out)
    return out


def compress(
    model: ModelLike,
    speedup: float,
    *,
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    method: str = "layermerge",
    calib: str | os.PathLike | None = None,
    calib_count: int = 8,
    cache_dir: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
    max_kernel: int = 7,
    units: int = 1000,
    tries: int = 4,
    progress: bool = True,
    distortion_fn: DistortionFn | None = None,
) -> CompressResult:
    """Compress `model` to run `speedup` times faster on `backend`; see the module docstring."""
    if speedup <= 1.0:
        raise OnnxMergeError(f"--speedup must be above 1.0, got {speedup}")
    if method not in ("layermerge", "depth"):
        raise OnnxMergeError(f"unknown --method {method!r}; choose layermerge or depth")
    proto = load(model, input_shapes)
    _, graph, m = analyze(proto, input_shapes)
    idx = [i for i, mc in enumerate(m.chains) if mc.mergeable]
    if not idx:
        raise OnnxMergeError(
            "no mergeable conv chains found in the model (see `onnxmerge inspect`)"
        )
    chains = [m.chains[i].chain for i in idx]
    norms = [
        {
            p: float(np.abs(conv_weight(m.chains[i].slots[p - 1].conv)[0]).sum())
            for p in range(1, m.chains[i].chain.length + 1)
        }
        for i in idx
    ]
    cands = enumerate_candidates(chains, norms, prune=method == "layermerge", max_kernel=max_kernel)
    be = get_backend(backend, **(backend_options or {}))
    with LatencyTable(cache_dir, be) as table:
        lat = table.measure_all([c.signature for c in cands], progress=progress)
        hits, new = table.stats.hits, table.stats.new

    base = gs.export_onnx(graph, do_type_check=False)
    base.ir_version = proto.ir_version
    feeds = [] if distortion_fn else calibration_inputs(proto, calib, calib_count)
    scorer = Scorer(base, feeds, distortion_fn)

    def job(c: Candidate):
        mc = m.chains[idx[c.chain]]
        src, dst = (t.name for t in segment_io(mc, c.start, c.end))
        return lambda: swap_segment(
            base,
            src,
            dst,
            segment_linear(mc, c.start, c.end, c.kept),
            f"{mc.chain.name}_cand_{c.start}_{c.end}",
        )

    imp = importance_table(scorer, [(c, job(c)) for c in cands if not c.unchanged], progress)
    offsets = np.cumsum([0] + [c.length for c in chains])
    entries = [
        Entry(
            int(offsets[c.chain] + c.start),
            int(offsets[c.chain] + c.end),
            lat[c.signature],
            imp.get(c, 0.0),
            key=c,
            all_kept=c.all_kept,
        )
        for c in cands
    ]
    total = int(offsets[-1])
    t_in = time_model(proto, be)
    covered = sum(lat[c.signature] for c in cands if c.unchanged)
    remainder = max(t_in.median_ms - covered, 0.0)
    budget = t_in.median_ms / speedup - remainder
    fastest = min_latency(total, entries, method)
    log = [
        f"input {t_in.median_ms:.3f} ms; chains' convs {covered:.3f} ms in the table; "
        f"other ops {remainder:.3f} ms; fastest plan predicted {fastest + remainder:.3f} ms"
    ]
    best = None
    for attempt in range(1, tries + 1):
        try:
            sol = solve(total, entries, budget, method=method, units=units)
        except InfeasibleBudget:
            reach = t_in.median_ms / (fastest + remainder)
            raise OnnxMergeError(
                f"speedup {speedup} is out of reach on {backend}: the fastest plan is predicted "
                f"at {fastest + remainder:.3f} ms vs {t_in.median_ms:.3f} ms "
                f"(at most ~{reach:.2f}x); nothing written"
            ) from None
        choices: dict[int, list] = {}
        for entry in sol.segments:
            c: Candidate = entry.key
            choices.setdefault(idx[c.chain], []).append((c.start, c.end, c.kept))
        out = _build(proto, choices, "merged", input_shapes)
        t_a, t_b = compare_models(proto, out, be)
        measured = t_a.median_ms / t_b.median_ms
        log.append(
            f"try {attempt}: budget {budget:.3f} ms, predicted "
            f"{sol.latency + remainder:.3f} ms, measured {t_b.median_ms:.3f} ms vs "
            f"{t_a.median_ms:.3f} ms = {measured:.3f}x"
        )
        if best is None or measured > best[0]:
            best = (measured, out, sol, choices, t_a, t_b, budget)
        if measured >= speedup * (1 - NOISE):
            break
        # Cut the conv budget by the measured shortfall and solve again.
        budget -= t_b.median_ms - t_a.median_ms / speedup
        if budget < fastest:
            budget = fastest * (1 + 1e-6)
    measured, out, sol, choices, t_a, t_b, used_budget = best
    if measured < speedup * (1 - NOISE):
        raise OnnxMergeError(
            f"speedup {speedup} not reached on {backend}: best measured {measured:.2f}x after "
            f"{tries} tries; nothing written (try a smaller --speedup)"
        )
    groups = []
    for entry in sol.segments:
        c = entry.key
        mc = m.chains[idx[c.chain]]
        groups.append(
            PlanGroup(
                mc.chain.name,
                c.start,
                c.end,
                list(c.kept),
                list(c.signature.kernel),
                float(entry.latency),
                float(entry.importance),
                mc.chain.activations[c.end],
            )
        )
    plan = Plan(
        method,
        backend,
        speedup,
        used_budget,
        sol.latency + remainder,
        t_a.median_ms,
        t_b.median_ms,
        groups,
        be.fingerprint(),
    )
    return CompressResult(
        out, plan, len(cands), len(set(lat)), hits, new, len(log) - 1, log, choices
    )


def write_outputs(
    result: CompressResult,
    source: onnx.ModelProto | None,
    output: str | os.PathLike,
    plan_path: str | os.PathLike | None = None,
    finetune_graph: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
) -> None:
    """Write the merged model, its plan and (optionally) the fine-tune form, atomically each."""
    if finetune_graph is not None:
        ft = _build(source, result.choices, "finetune", input_shapes)
        save_model(ft, finetune_graph)
    save_model(result.model, output)
    if plan_path is not None:
        result.plan.save(plan_path)
