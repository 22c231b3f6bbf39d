"""compress(): the main job, end to end.

load -> normalize -> match -> candidates -> latency table (measured on the backend) and
importance table (ONNX Runtime on calibration inputs, cached) -> solve under the latency budget
-> rewrite -> verify -> measure input and output end to end, interleaved -> calibrate (refit
the merged convs by least squares, onnxmerge.refit). If the measured speedup falls short of
the target, the conv budget is cut by the shortfall and the DP solves again (up to `tries`
plans measured); if it overshoots by more than 10%, the budget is loosened by half the
excess. Budgets stay inside the bracket the measured plans set (bisecting when a plan
repeats); of the plans that reach the target, the most important (least distortion) one wins.
Merged candidates no faster than their convs unmerged are dropped before the importance
table (candidates.dominated): they could only lose.
The budget for the DP is the target latency minus the part of the network the chains do not
cover (measured input latency minus the table latencies of its convs). `from_plan` rebuilds a
saved plan without solving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmerge.api import ModelLike, analyze, check_runs, load
from onnxmerge.calib_data import calibration_inputs, calibration_set, describe
from onnxmerge.candidates import Candidate, dominated, enumerate_candidates
from onnxmerge.chain import Chain
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import save_model
from onnxmerge.graph.ir import conv_weight
from onnxmerge.importance import DistortionFn, Job, importance_table
from onnxmerge.importance_cache import ImportanceCache
from onnxmerge.latency import LatencyTable, compare_models, get_backend, time_model
from onnxmerge.passes.merge_group import segment_io, segment_linear
from onnxmerge.plan import Plan, groups_from_choices
from onnxmerge.refit import GroupFit, refit_merged
from onnxmerge.rewrite import apply_choices, export
from onnxmerge.solve import Entry, InfeasibleBudget, Solution, fastest_plan, min_latency, solve

NOISE = 0.03  # measured speedups within 3% of the target count as reaching it
OVERSHOOT = 0.10  # a plan more than 10% faster than asked is loosened (it costs fidelity)


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
    calibration: list[GroupFit] = field(default_factory=list)
    importance_hits: int = 0


class _Composer:
    """Composes candidates in order, sharing prefixes between those of one chain and start."""

    def __init__(self) -> None:
        self.where: tuple | None = None
        self.memo: dict = {}

    def __call__(self, mc, c: Candidate):
        if (c.chain, c.start) != self.where:  # a new start: old prefixes are never reused
            self.memo.clear()
            self.where = (c.chain, c.start)
        return segment_linear(mc, c.start, c.end, c.kept, self.memo)


def _normalized(graph: gs.Graph, proto: onnx.ModelProto) -> onnx.ModelProto:
    """The normalized original network: the reference importance and calibration run."""
    base = gs.export_onnx(graph, do_type_check=False)
    base.ir_version = proto.ir_version
    return base


def _jobs(m, idx: list[int], cands: list[Candidate]) -> list[Job]:
    """One importance job per candidate that changes the network."""
    composer = _Composer()
    jobs = []
    for c in cands:
        if c.unchanged:
            continue
        mc = m.chains[idx[c.chain]]
        src, dst = (t.name for t in segment_io(mc, c.start, c.end))
        jobs.append(
            Job(
                c,
                src,
                dst,
                lambda mc=mc, c=c: composer(mc, c),
                f"{mc.chain.name}_cand_{c.start}_{c.end}",
                (c.chain, c.start, c.end, c.kept),
            )
        )
    return jobs


def build_choices(
    model: ModelLike, choices: dict, form: str = "merged", input_shapes: dict | None = None
) -> onnx.ModelProto:
    """The merged (or fine-tune) network of `choices` (chain index -> [(start, end, kept)])."""
    proto = load(model, input_shapes)
    _, graph, m = analyze(proto, input_shapes)
    apply_choices(graph, m, choices, form=form)
    out = export(graph, proto)
    check_runs(out)
    return out


def compress(
    model: ModelLike,
    speedup: float | str,
    *,
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
    max_kernel: int = 7,
    units: int = 1000,
    tries: int = 4,
    progress: bool = True,
    distortion_fn: DistortionFn | None = None,
    candidate_filter: Callable[[Candidate, Chain], bool] | None = None,
) -> CompressResult:
    """Compress `model` to run `speedup` times faster on `backend`; see the module docstring.

    `calibrate` refits every merged conv by least squares on the calibration inputs (plain
    composition without it); `calibrate_importance` (default: same as `calibrate`) scores
    candidates with their refit convs. `distortion_fn(model) -> float` replaces the built-in
    output distortion (KL / relative error) used for importance. `speedup="max"` asks for the
    fastest plan. `candidate_filter(candidate, chain)` restricts the merged convs the DP may
    choose (single unchanged convs are always allowed), e.g. for baselines that only merge
    whole blocks. A path's external data is read from its own folder; for another folder
    pass `onnxmerge.api.load(path, external_data_dir=DIR)`.
    """
    fastest_wanted = speedup == "max"
    if not fastest_wanted:
        try:
            speedup = float(speedup)
        except ValueError:
            raise OnnxMergeError(f"--speedup must be a number or 'max', got {speedup!r}") from None
        if not speedup > 1.0:
            raise OnnxMergeError(f"--speedup must be above 1.0, got {speedup}")
    if tries < 1:
        raise OnnxMergeError(f"tries must be at least 1, got {tries}")
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
    if candidate_filter is not None:
        cands = [c for c in cands if c.unchanged or candidate_filter(c, chains[c.chain])]
    be = get_backend(backend, **(backend_options or {}))
    clock = time.perf_counter()
    with LatencyTable(cache_dir, be) as table:
        lat = table.measure_all(
            [c.signature for c in cands], progress=progress, subtract_overhead=True
        )
        hits, new = table.stats.hits, table.stats.new
    phases = [f"latency table {time.perf_counter() - clock:.1f} s"]
    # Only LayerMerge can drop them (the depth method reads a span's importance off its merged
    # entry even where the span ends up split into faster pieces), and only with the built-in
    # distortion, which scores nothing above the unchanged network.
    drop = method == "layermerge" and distortion_fn is None
    slow = dominated(cands, lat) if drop else set()
    cands = [c for c in cands if c not in slow]
    clock = time.perf_counter()

    base = _normalized(graph, proto)
    calib_set = calibration_set(proto, calib, calib_count)
    feeds = calib_set.feeds
    fit_options = {"ridge": ridge}
    cal_imp = calibrate if calibrate_importance is None else calibrate_importance
    jobs = _jobs(m, idx, cands)
    cache = None
    if distortion_fn is None:
        keyed = {**fit_options, "groups": calib_set.groups}  # the held-out split changes scores
        cache = ImportanceCache(cache_dir, base, feeds, cal_imp, keyed)
    todo = [j for j in jobs if cache is None or j.key not in cache]
    imp = importance_table(
        base,
        feeds,
        todo,
        calibrate=cal_imp,
        fit_options=fit_options,
        distortion_fn=distortion_fn,
        progress=progress,
        groups=calib_set.groups,
    )
    if cache is not None:
        cache.update(imp)
        imp = {j.key: cache[j.key] for j in jobs}
    phases.append(f"importance {time.perf_counter() - clock:.1f} s ({len(todo)} scored)")
    t_in = time_model(proto, be)
    covered = sum(lat[c.signature] for c in cands if c.unchanged)
    # Convs timed alone can sum to more than the whole network (small convs keep some fixed
    # cost in isolation); then scale the table so the unchanged network is predicted right.
    scale = min(1.0, t_in.median_ms / covered) if covered > 0 else 1.0
    remainder = max(t_in.median_ms - covered, 0.0)
    offsets = np.cumsum([0] + [c.length for c in chains])
    entries = [
        Entry(
            int(offsets[c.chain] + c.start),
            int(offsets[c.chain] + c.end),
            lat[c.signature] * scale,
            imp.get(c, 0.0),
            key=c,
            all_kept=c.all_kept,
        )
        for c in cands
    ]
    total = int(offsets[-1])
    log = [
        describe(calib, proto),
        "time: " + ", ".join(phases),
        f"input {t_in.median_ms:.3f} ms; chains' convs {covered:.3f} ms in the table"
        + (f" (scaled by {scale:.2f})" if scale < 1 else "")
        + f"; other ops {remainder:.3f} ms",
    ]
    if slow:
        log.insert(1, f"dropped {len(slow)} candidates no faster than their convs unmerged")
    found = _search(
        entries,
        total,
        method,
        units,
        None if fastest_wanted else speedup,
        remainder,
        tries,
        t_in.median_ms,
        build=lambda ch: build_choices(proto, ch, "merged", input_shapes),
        measure=lambda out: compare_models(proto, out, be),
        chain_index=idx,
        log=log,
        backend=backend,
    )
    out, sol, choices = found.model, found.solution, found.choices
    fits: list[GroupFit] = []
    if calibrate:
        out, fits = _calibrate(base, out, m, choices, feeds, fit_options, log)
    where = {(idx[e.key.chain], e.key.start, e.key.end): e for e in sol.segments}
    groups = groups_from_choices(
        [mc.chain for mc in m.chains],
        choices,
        latency={k: e.latency for k, e in where.items()},
        importance={k: e.importance for k, e in where.items()},
    )
    plan = Plan(
        method,
        backend,
        None if fastest_wanted else speedup,
        found.budget,
        sol.latency + remainder,
        found.input_ms,
        found.output_ms,
        groups,
        be.fingerprint(),
    )
    return CompressResult(
        out,
        plan,
        len(cands),
        len(set(lat)),
        hits,
        new,
        found.tries,
        log,
        choices,
        fits,
        len(jobs) - len(todo),
    )


@dataclass
class _Found:
    model: onnx.ModelProto
    solution: Solution
    choices: dict
    budget: float
    input_ms: float
    output_ms: float
    tries: int = 1

    @property
    def measured(self) -> float:
        return self.input_ms / self.output_ms


def _unchanged(entry: Entry) -> bool:
    """The entry is one original conv, as it was (Candidate.unchanged, read off the entry)."""
    return entry.end - entry.start == 1 and entry.all_kept


def _search(
    entries: list[Entry],
    total: int,
    method: str,
    units: int,
    speedup: float | None,
    remainder: float,
    tries: int,
    input_ms: float,
    *,
    build: Callable[[dict], onnx.ModelProto],
    measure: Callable[[onnx.ModelProto], tuple],
    chain_index: list[int],
    log: list[str],
    backend: str,
) -> _Found:
    """Solve, build, measure; re-solve with the budget moved by the measured miss.

    `speedup=None` asks for the fastest plan (one try). Budgets stay between the highest that
    gave a plan reaching the target and the lowest that fell short (bisecting where the miss
    points outside, or a plan repeats); no plan is measured twice and the unchanged network
    never. Of the plans that reach the target, the most important (least distortion) one
    wins; if none does, that is an error.
    """
    fastest = min_latency(total, entries, method)
    log.append(f"fastest plan predicted {fastest + remainder:.3f} ms")
    floor = fastest * (1 + 1e-6)
    budget = floor if speedup is None else input_ms / speedup - remainder
    if speedup is not None and budget < fastest:
        raise OnnxMergeError(
            f"speedup {speedup} is out of reach on {backend}: the fastest plan is predicted "
            f"at {fastest + remainder:.3f} ms vs {input_ms:.3f} ms "
            f"(at most ~{input_ms / (fastest + remainder):.2f}x); nothing written"
        )
    # Budgets known to reach the target (with room to give back) and to fall short: every
    # later budget lies between them. The unchanged network (budget `top`) reaches nothing.
    top = sum(e.latency for e in entries if _unchanged(e))
    lo, hi = floor, max(top, floor) * (1 + 1e-6)
    best: tuple | None = None
    reached_by: dict[str, bool] = {}  # plan -> whether it reached the target when measured
    repeats, tried_floor = 0, False
    for _ in range(3 * tries):  # `tries` plans measured; re-solves are cheap
        tried_floor = tried_floor or budget <= floor
        try:
            if speedup is None:
                sol = fastest_plan(total, entries, method)
            else:
                sol = solve(total, entries, budget, method=method, units=units)
        except InfeasibleBudget:  # latencies round up to budget units: just above the floor
            sol = fastest_plan(total, entries, method)
        choices: dict[int, list] = {}
        for entry in sol.segments:
            c: Candidate = entry.key
            choices.setdefault(chain_index[c.chain], []).append((c.start, c.end, c.kept))
        key = repr(choices)
        unchanged = all(_unchanged(e) for e in sol.segments)
        if speedup is not None and (key in reached_by or unchanged):
            # Nothing new to measure at this budget: narrow the bracket and bisect.
            repeats += 1
            if reached_by.get(key, False):
                lo = max(lo, budget)
            else:
                hi = min(hi, budget)
        else:
            out = build(choices)
            t_a, t_b = measure(out)
            found = _Found(out, sol, choices, budget, t_a.median_ms, t_b.median_ms)
            log.append(
                f"try {len(reached_by) + 1}: budget {budget:.3f} ms, predicted "
                f"{sol.latency + remainder:.3f} ms, measured {found.output_ms:.3f} ms vs "
                f"{found.input_ms:.3f} ms = {found.measured:.3f}x"
            )
            if speedup is None:
                if found.measured <= 1.0:
                    raise OnnxMergeError(
                        f"no plan is faster than the input on {backend}: the fastest measured "
                        f"{found.measured:.2f}x; nothing written"
                    )
                return found
            reached = reached_by[key] = found.measured >= speedup * (1 - NOISE)
            rank = (reached, sol.importance if reached else found.measured)
            if best is None or rank > best[0]:
                best = (rank, found)
            if len(reached_by) == tries or (
                reached and found.measured <= speedup * (1 + OVERSHOOT)
            ):
                break
            if reached:
                lo = max(lo, budget)
            else:
                hi = min(hi, budget)
            # Move the conv budget by the measured miss: a shortfall cuts it, an overshoot
            # (more removed than asked, at the cost of fidelity) gives half of it back.
            miss = found.output_ms - found.input_ms / speedup
            budget -= miss if miss > 0 else miss / 2
            if lo < budget < hi:
                continue
            if budget <= lo == floor and not tried_floor:  # the shortfall asks for everything
                budget = floor
                continue
        budget = (lo + hi) / 2
        if hi - lo < 1e-3 * hi:  # nothing left between a plan that reaches and one that doesn't
            break
    if repeats:
        log.append(f"{repeats} more budgets gave a plan already measured, or no change")
    if best is None:
        raise OnnxMergeError(
            f"speedup {speedup} not reached on {backend}: every plan the budget allows leaves "
            "the network unchanged; nothing written (try a larger --speedup)"
        )
    found = best[1]
    if found.measured < speedup * (1 - NOISE):
        raise OnnxMergeError(
            f"speedup {speedup} not reached on {backend}: best measured {found.measured:.2f}x "
            f"after {len(reached_by)} plans; nothing written (try a smaller --speedup)"
        )
    found.tries = len(reached_by)
    return found


def _calibrate(
    base: onnx.ModelProto,
    out: onnx.ModelProto,
    m,
    choices: dict,
    feeds: list[dict],
    fit_options: dict,
    log: list[str],
) -> tuple[onnx.ModelProto, list[GroupFit]]:
    """Refit the merged convs of `out` (in place of the proto returned)."""
    # The refit changes weights only, not geometry: latencies measured before it stand.
    names = {
        f"{m.chains[ci].chain.name}_merged_{s}_{e}"
        for ci, segs in choices.items()
        for s, e, _ in segs
    }
    clock = time.perf_counter()
    out, fits = refit_merged(base, out, names, feeds, fit_options)
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
) -> CompressResult:
    """Rebuild a saved plan on `model` (no latency table, importance or solve), measure it.

    For re-running a plan chosen once (e.g. on another machine, or with other calibration
    data). The plan's chains are found by name; a plan that does not fit the model is an error.
    """
    proto = load(model, input_shapes)
    _, graph, m = analyze(proto, input_shapes)
    by_name = {mc.chain.name: i for i, mc in enumerate(m.chains)}
    choices: dict[int, list] = {}
    for g in plan.groups:
        ci = by_name.get(g.chain)
        ok = (
            ci is not None
            and m.chains[ci].mergeable
            and m.chains[ci].chain.is_valid(g.start, g.end)
        )
        if not ok or not set(g.kept) <= set(range(g.start + 1, g.end + 1)):
            raise OnnxMergeError(
                f"the plan does not fit this model: no valid segment ({g.start}, {g.end}] "
                f"of chain {g.chain!r} (see `onnxmerge inspect`)"
            )
        choices.setdefault(ci, []).append((g.start, g.end, tuple(g.kept)))
    be = get_backend(backend, **(backend_options or {}))
    out = build_choices(proto, choices, "merged", input_shapes)
    t_a, t_b = compare_models(proto, out, be)
    log = [
        f"rebuilt {len(plan.groups)} plan groups; measured {t_b.median_ms:.3f} ms vs "
        f"{t_a.median_ms:.3f} ms = {t_a.median_ms / t_b.median_ms:.3f}x"
    ]
    fits: list[GroupFit] = []
    if calibrate:
        base = _normalized(graph, proto)
        feeds = calibration_inputs(proto, calib, calib_count)
        log.insert(0, describe(calib, proto))
        out, fits = _calibrate(base, out, m, choices, feeds, {"ridge": ridge}, log)
    new_plan = replace(
        plan,
        backend=backend,
        measured_input_ms=t_a.median_ms,
        measured_output_ms=t_b.median_ms,
        fingerprint=be.fingerprint(),
    )
    return CompressResult(out, new_plan, 0, 0, 0, 0, 1, log, choices, fits)


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
        ft = build_choices(source, result.choices, "finetune", input_shapes)
        save_model(ft, finetune_graph)
    save_model(result.model, output)
    if plan_path is not None:
        result.plan.save(plan_path)
