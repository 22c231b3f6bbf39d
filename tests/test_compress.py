"""End to end: `onnxmerge IN OUT --speedup X` on small built-in models (real ort-cpu timing).

Targets are modest so the retry loop absorbs this shared machine's noise; speed figures
themselves live in benchmarks/.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partitions import build_segments

from onnxmerge import zoo
from onnxmerge.api import fuse
from onnxmerge.calibration.data import calibration_inputs
from onnxmerge.compress import compress, from_plan
from onnxmerge.errors import OnnxMergeError
from onnxmerge.plan import Plan
from onnxmerge.runtime import compare_outputs, random_inputs, run, session


def _cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "onnxmerge.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    # A small ResNet-18: few candidates keep the importance table quick.
    folder = tmp_path_factory.mktemp("net")
    path = folder / "net.onnx"
    onnx.save(zoo.resnet(18, width=0.25, size=64), path)
    return path


@pytest.mark.slow
def test_cli_compress_writes_merged_plan_and_exact_finetune_graph(net, tmp_path):
    out, ft, plan = tmp_path / "out.onnx", tmp_path / "ft.onnx", tmp_path / "plan.json"
    before = net.read_bytes()
    r = _cli(
        str(net),
        str(out),
        "--speedup",
        "max",
        "--cache",
        str(tmp_path / "cache"),
        "--finetune-graph",
        str(ft),
        "--plan",
        str(plan),
        "--no-calibrate",
        "--prune",
        "depth",
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert net.read_bytes() == before
    p = Plan.from_json(plan.read_text())
    # "max": the fastest plan is written whatever the noise of timing a tiny net (a fixed
    # target can be missed by a few percent on a busy machine, which refuses to write).
    assert p.measured_speedup > 1.0
    assert p.predicted_ms > 0 and p.groups
    merged = onnx.load(out)
    onnx.checker.check_model(merged)
    n_in = sum(n.op_type == "Conv" for n in onnx.load(net).graph.node)
    assert sum(n.op_type == "Conv" for n in merged.graph.node) < n_in
    # The fine-tune form fuses exactly, into the (uncalibrated) merged network, with its convs.
    assert p.groups[0].convs  # the plan names the kept convs: `fuse --plan` finds them by name
    fused, _ = fuse(str(ft), plan=plan)
    assert sum(n.op_type == "Conv" for n in fused.graph.node) == sum(
        n.op_type == "Conv" for n in merged.graph.node
    )
    ft_model = onnx.load(ft)
    for d in compare_outputs(ft_model, fused).values():
        assert d.max_rel <= 1e-5
    for d in compare_outputs(merged, fused).values():
        assert d.max_rel <= 1e-5
    # A second run hits the latency cache for every conv.
    r2 = _cli(
        str(net),
        str(tmp_path / "o2.onnx"),
        "--speedup",
        "max",
        "--cache",
        str(tmp_path / "cache"),
        "--no-calibrate",
        "--prune",
        "depth",
        home=tmp_path,
    )
    assert r2.returncode == 0, r2.stderr
    assert " 0 measured;" in r2.stdout
    # ... and the importance cache for every candidate: nothing is scored again.
    assert "(0 scored)" in r2.stdout and "importance cache 0 hits" not in r2.stdout


@pytest.mark.slow
def test_impossible_target_says_so_and_writes_nothing(net, tmp_path):
    out = tmp_path / "out.onnx"
    r = _cli(str(net), str(out), "--speedup", "50", "--cache", str(tmp_path / "c"), home=tmp_path)
    # (the default, --prune both: every split's width stage is out of reach)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("onnxmerge:")]
    assert len(errors) == 1 and "out of reach" in errors[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["layermerge", "depth"])
def test_python_api_both_methods(method, tmp_path):
    model = zoo.resnet(18, width=0.25, size=64)
    try:
        res = compress(model, 1.1, kind="depth", method=method, cache_dir=tmp_path, progress=False)
    except OnnxMergeError as exc:
        # depth never prunes: on ResNet merging 3x3s only grows kernels, so it may not reach.
        assert method == "depth" and ("out of reach" in str(exc) or "not reached" in str(exc))
        return
    assert res.plan.method == method
    assert res.plan.measured_speedup >= 1.1 * 0.97
    if method == "depth":  # depth never prunes
        assert all(g.end - g.start <= 2 for g in res.plan.groups)
    feeds = random_inputs(model)
    out = run(res.model, feeds)
    assert all(np.isfinite(v).all() for v in out.values())
    json.loads(res.plan.to_json())


@pytest.mark.slow
def test_custom_distortion_hook_is_used(tmp_path):
    model = zoo.resnet(18, width=0.25, size=64)
    calls = []

    def distortion(m: onnx.ModelProto) -> float:
        calls.append(len(m.graph.node))
        return float(len(m.graph.node))  # fewer nodes scores as less distortion

    res = compress(
        model,
        "max",
        kind="depth",
        cache_dir=tmp_path,
        progress=False,
        distortion_fn=distortion,
        candidate_filter=lambda cand, chain: cand.end - cand.start <= 2,  # short merges only
    )
    assert len(calls) > 1
    assert res.plan.target_speedup is None  # "max": the fastest plan
    assert res.plan.measured_speedup > 1.0
    assert all(g.end - g.start <= 2 for g in res.plan.groups)


def _distortion(model: onnx.ModelProto, other: onnx.ModelProto, feeds: list[dict]) -> float:
    a, b = session(model), session(other)
    ref = np.concatenate([a.run(None, f)[0] for f in feeds]).astype(np.float64)
    out = np.concatenate([b.run(None, f)[0] for f in feeds]).astype(np.float64)
    return float(np.sum((out - ref) ** 2) / np.sum(ref**2))


@pytest.mark.slow
def test_calibrated_merge_is_closer_to_the_original_than_composition(tmp_path):
    """Same plan both ways: the refit network is closer to the original on held-out inputs."""
    model = zoo.resnet(18, width=0.25, size=64)
    cal = compress(model, 1.1, kind="depth", cache_dir=tmp_path, progress=False)
    fitted = [f for f in cal.calibration if f.fitted]
    assert fitted  # (a group on too few pixels keeps plain composition and says why)
    assert all(f.error_after <= f.error_before for f in fitted)
    assert all(f.reason for f in cal.calibration if not f.fitted)
    # Rebuild the calibrated plan without the refit: same geometry, composed weights.
    plain = build_segments(model, cal.items)
    held_out = calibration_inputs(model, None, 8, seed=123)
    d_cal = _distortion(model, cal.model, held_out)
    d_plain = _distortion(model, plain, held_out)
    assert d_cal < d_plain
    # The refit only changes weights: same nodes, same shapes.
    assert [n.op_type for n in cal.model.graph.node] == [n.op_type for n in plain.graph.node]
    # A saved plan rebuilds the same network, calibration included (deterministic).
    again = from_plan(model, Plan.from_json(cal.plan.to_json()))
    for a, b in zip(again.model.graph.initializer, cal.model.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    bad = Plan.from_json(cal.plan.to_json())
    bad.groups[0].chain = "no-such-chain"
    with pytest.raises(OnnxMergeError, match="does not fit"):
        from_plan(model, bad)


# -- the budget search, with a stand-in for building and timing --------------------------------
def _search_run(measured_scale: float, speedup: float, tries: int = 4, start=None, load=()):
    """Six single-conv positions, each mergeable with its neighbour; the 'network' measures
    `measured_scale` x its predicted latency (+ 1 ms of other ops), times load[i] at the
    i-th measurement (a moment's load on the output only). The search runs on the solver
    alone: no ONNX, no kind."""
    from onnxmerge.kinds import Selection
    from onnxmerge.search import Measured, search
    from onnxmerge.solve import Entry, fastest_plan, solve

    entries = [Entry(p, p + 1, 2.0, 0.0, key=(p, p + 1)) for p in range(6)]
    entries += [Entry(p, p + 2, 1.0 + p / 10, -1.0 - p, key=(p, p + 2)) for p in range(0, 6, 2)]
    lat = {e.key: e.latency for e in entries}
    built = []

    def selection(sol):
        items = tuple(e.key for e in sol.segments)
        return Selection(items, sol.latency, sol.importance, all(e - s == 1 for s, e in items))

    def measure(sel):
        factor = load[len(built)] if len(built) < len(load) else 1.0
        built.append(sel.items)
        assert not sel.unchanged, "the unchanged network is never built"
        return Measured(13.0, factor * (1.0 + measured_scale * sum(lat[k] for k in sel.items)))

    log: list[str] = []
    found = search(
        lambda budget: selection(solve(6, entries, budget, method="layermerge", units=1000)),
        selection(fastest_plan(6, entries, "layermerge")),
        measure,
        speedup=speedup,
        input_ms=13.0,
        remainder_ms=1.0,
        unchanged_ms=12.0,
        tries=tries,
        log=log,
        backend="test",
        start=start,
    )
    return found, built, log


def test_search_reaches_the_target_with_the_most_important_plan():
    found, built, _ = _search_run(1.0, 1.2)
    assert found.measured.speedup >= 1.2 * 0.97
    assert len(built) == len(set(built)) == found.tries  # no plan is built twice
    # 1.2x of 13 ms is 10.8 ms: one merge (the most important, -1) is enough
    assert found.selection.importance == -1.0


def test_search_cuts_the_budget_when_the_table_is_optimistic():
    # Convs measure 1.6x their table time: the first plan falls short, later ones must cut.
    found, built, log = _search_run(1.6, 1.2)
    assert found.measured.speedup >= 1.2 * 0.97, log
    assert found.tries > 1 and len(built) == len(set(built))


@pytest.mark.parametrize("speedup", [1.2, 1.5, 2.0])
def test_search_interpolates_when_the_table_misses_by_a_growing_factor(speedup):
    """A linearized cost model (width's) under-predicts what a cut saves by a factor that
    grows with the cut: here the network measures 1 + 12 * (predicted / 12) ** 2.5 ms. Ratio
    steps alone swung across the target and missed the window at each of these targets (1.5x
    landed at 2.23x, as ResNet-18 width did: 2.56x, 1.10x, 2.23x, 1.30x); with plans measured
    on both sides the search interpolates and lands within REFINE of it in 4 tries."""
    from onnxmerge.kinds import Selection
    from onnxmerge.search import REFINE, Measured, search

    def solve(budget):  # any predicted latency on a 0.01 ms grid, from 2 ms up
        latency = max(2.0, math.floor(budget * 100) / 100)
        return Selection((latency,), latency, latency - 12.0, latency >= 12.0)  # keep: better

    built = []

    def measure(sel):
        built.append(sel.items)
        return Measured(13.0, 1.0 + 12.0 * (sel.latency / 12.0) ** 2.5)

    log: list[str] = []
    found = search(solve, solve(2.0), measure, speedup=speedup, input_ms=13.0, remainder_ms=1.0,
                   unchanged_ms=12.0, tries=4, log=log, backend="test")  # fmt: skip
    assert speedup * 0.97 <= found.measured.speedup <= speedup * (1 + REFINE), log
    assert len(built) == len(set(built)) <= 4


def test_search_starts_at_a_remembered_budget():
    # An optimistic table (convs measure 1.6x) needs more than one try cold; started at the
    # budget the cold search settled on, the same plan is the first measured, and kept.
    cold, built, _ = _search_run(1.6, 1.2)
    warm, again, log = _search_run(1.6, 1.2, start=cold.budget)
    assert len(built) > 1 and again == [cold.selection.items] and warm.tries == 1, log
    assert any("earlier run" in line for line in log)


def test_a_remembered_plan_measured_slow_once_is_measured_again_and_kept():
    # The warm run's first measurement of the remembered plan comes 15% slow (a moment's
    # load): measured again, it is inside the window as in the cold run, and kept; no other
    # plan is measured. Slow twice, the two are pooled and the search moves on.
    cold, _, _ = _search_run(1.6, 1.2)
    warm, built, log = _search_run(1.6, 1.2, start=cold.budget, load=(1.15,))
    assert built == [cold.selection.items] * 2 and warm.tries == 1, log
    assert warm.measured.speedup == pytest.approx(cold.measured.speedup)
    assert any("inside the window, as in the earlier run" in line for line in log)
    moved, built, log = _search_run(1.6, 1.2, start=cold.budget, load=(1.15, 1.15))
    assert built[:2] == [cold.selection.items] * 2 and len(built) > 2, log
    assert any("pooled" in line for line in log)
    assert moved.measured.speedup >= 1.2 * 0.97


@given(
    scale=st.floats(0.3, 2.0),
    speedup=st.floats(1.02, 1.8),
    start=st.floats(0.0, 15.0),
    load=st.lists(st.floats(0.8, 1.25), max_size=3),
)
@settings(max_examples=40, deadline=None)
def test_search_keeps_its_promise_from_any_start(scale, speedup, start, load):
    """A remembered budget only moves the first try: from any start, under any load, the
    search measures no plan twice but the remembered one, and returns only a plan that
    reaches."""
    try:
        found, built, log = _search_run(scale, speedup, start=start, load=load)
    except OnnxMergeError as exc:
        assert "not reached" in str(exc) or "out of reach" in str(exc)
        return
    again = int(len(built) > 1 and built[0] == built[1])
    assert len(built) - again == len(set(built)) == found.tries <= 4
    assert found.measured.speedup >= speedup * 0.97, log


def _fine_search(scale: float, speedup: float, tries: int = 4, start=None):
    """A stand-in with fine steps: plan i (i = 0..80) predicts 4 + 0.1 i ms for the covered
    part (12 ms unchanged), its importance grows with its latency (a larger budget never
    loses importance, as the DP's), and the network measures 1 ms + `scale` x the
    prediction against 13 ms."""
    from onnxmerge.kinds import Selection
    from onnxmerge.search import Measured, search
    from onnxmerge.solve import InfeasibleBudget

    def plan(i: int) -> Selection:
        return Selection((i,), 4 + 0.1 * i, -(80 - i) / 10, False)

    def solve(budget: float) -> Selection:
        if budget < 4:
            raise InfeasibleBudget(budget, 4.0, 1000)
        return plan(min(79, int(round((budget - 4) * 10, 6))))

    built: list = []

    def measure(sel: Selection) -> Measured:
        built.append(sel.items)
        return Measured(13.0, 1.0 + scale * sel.latency)

    log: list[str] = []
    found = search(solve, plan(0), measure, speedup=speedup, input_ms=13.0, remainder_ms=1.0,
                   unchanged_ms=12.0, tries=tries, log=log, backend="test",
                   start=start)  # fmt: skip
    return found, built, log


def test_a_cold_search_far_above_the_target_comes_closer():
    # The table is pessimistic (convs measure 0.92x their prediction): the first plan lands
    # at 1.30x for 1.2x, inside the window but 8% above; the search goes on and keeps a
    # plan within 5% of the target (more important: a larger budget). A warm run started at
    # the first plan's budget keeps it (its cold run chose it).
    from onnxmerge.search import REFINE

    found, built, log = _fine_search(0.92, 1.2)
    first = 13.0 / (1.0 + 0.92 * (4 + 0.1 * built[0][0]))
    assert first > 1.2 * (1 + REFINE), log
    assert 1.2 * 0.97 <= found.measured.speedup <= 1.2 * (1 + REFINE), log
    assert 1 < found.tries == len(built) == len(set(built))
    warm, again, _ = _fine_search(0.92, 1.2, start=4 + 0.1 * built[0][0])
    assert again == built[:1] and warm.tries == 1


@given(scale=st.floats(0.5, 1.5), speedup=st.floats(1.05, 4.0))
@settings(max_examples=80, deadline=None)
def test_a_cold_search_lands_near_the_target_when_a_plan_does(scale, speedup):
    """Where some plan measures within [target - NOISE, target + REFINE], a cold search with
    its four tries returns one there, or has used every try (also when the table calls the
    target out of reach and the fastest plan is measured first); it never measures a plan
    twice and always returns one that reaches."""
    from onnxmerge.search import NOISE, REFINE

    try:
        found, built, log = _fine_search(scale, speedup)
    except OnnxMergeError as exc:
        assert "not reached" in str(exc) or "out of reach" in str(exc)
        return
    low, high = speedup * (1 - NOISE), speedup * (1 + REFINE)
    near = [i for i in range(80) if low <= 13 / (1 + scale * (4 + 0.1 * i)) <= high]
    got = found.measured.speedup
    assert len(built) == len(set(built)) == found.tries <= 4
    assert got >= speedup * (1 - NOISE), log
    if near:
        assert got <= high or found.tries == 4, log


@given(
    breaks=st.lists(st.floats(5.0, 15.0), min_size=1, max_size=6, unique=True),
    start=st.floats(5.0, 15.0),
    wanted=st.integers(0, 6),
    floor=st.floats(0.0, 12.0),
)
@settings(max_examples=60, deadline=None)
def test_a_remembered_plan_is_found_near_the_scaled_budget(breaks, start, wanted, floor):
    """The solver's plan is a step function of the budget (plan i between the i-th and
    (i+1)-th break; below `floor` no plan fits). remembered_start returns the grid budget
    nearest the scaled one (within 5%, 0.5% steps) whose plan is the remembered one, or the
    scaled budget when none is."""
    import bisect

    from onnxmerge.kinds import Selection
    from onnxmerge.search import SPREAD, STEPS, remembered_start
    from onnxmerge.solve import InfeasibleBudget

    breaks = sorted(breaks)

    def solve(budget):
        if budget < floor:
            raise InfeasibleBudget(budget, floor, 1000)
        return Selection((bisect.bisect(breaks, budget),), budget, 0.0, False)

    def key(sel):
        return str(sel.items[0])

    got = remembered_start({"fraction": start / 20, "plan": str(wanted)}, 20.0, solve, key)
    start = start / 20 * 20  # as remembered_start scales it (float rounding)
    grid = [start * (1 + SPREAD * i / STEPS) for i in range(-STEPS, STEPS + 1)]
    hits = [b for b in grid if b >= floor and key(solve(b)) == str(wanted)]
    if not hits:
        assert got == pytest.approx(start)
        return
    assert key(solve(got)) == str(wanted)
    assert abs(got - start) == pytest.approx(min(abs(b - start) for b in hits))
    assert remembered_start(start / 20, 20.0, solve, key) == pytest.approx(start)  # old cache
    assert remembered_start({"plan": "0"}, 20.0, solve, key) is None


def test_a_warm_run_starts_at_the_budget_the_cold_run_settled_on(
    tmp_path, monkeypatch, macs_backend
):
    """The search's settled budget is remembered per request, as a fraction of the unchanged
    network's predicted latency: the next run of the request starts there; the input's
    latency comes from the cache; another target starts afresh. Timed by MacsBackend (real
    timing of this 0.1 ms network failed the cold run's target under load)."""
    import onnxmerge.compress as compress_module

    calls = []
    real_search = compress_module.search

    def search(*args, **kwargs):
        found = real_search(*args, **kwargs)
        calls.append((kwargs["start"], found.budget, kwargs["unchanged_ms"]))
        return found

    monkeypatch.setattr(compress_module, "search", search)
    model = zoo.resnet(18, width=0.25, size=32)
    run = {"kind": "depth", "cache_dir": tmp_path, "progress": False, "calib_count": 8}
    run["backend"] = macs_backend
    cold = compress(model, 1.2, **run)
    timings = _count_plan_timings(monkeypatch)
    monkeypatch.setattr("onnxmerge.latency.table.RUN", "the warm run")
    warm = compress(model, 1.2, **run)
    (start0, settled, unchanged0), (start1, _, unchanged1) = calls
    assert start0 is None and start1 == pytest.approx(settled / unchanged0 * unchanged1)
    assert any("where an earlier run of this request settled" in line for line in warm.log)
    assert any(line.startswith("input ") and "(cache)" in line for line in warm.log)
    # The plan the cold run kept (inside the window) is the warm run's first, and its
    # measurement is the cold run's (LatencyTable.compare): the warm run times no plan.
    assert 1.2 * 0.97 <= cold.plan.measured_speedup <= 1.2 * 1.15, cold.log
    assert len(timings) == 0 and warm.tries == 1, (cold.log, warm.log)
    assert any("measured before (cache" in line for line in warm.log)
    assert warm.plan.measured_speedup == pytest.approx(cold.plan.measured_speedup)
    # The cold run's input timing joined the pool of input times once; the warm run's replayed
    # one (the cold run's pair) did not, so it does not count twice.
    with sqlite3.connect(tmp_path / "latency.sqlite") as db:
        runs = db.execute("SELECT run, COUNT(*) FROM network_runs GROUP BY run").fetchall()
    assert len(runs) == 1 and runs[0][1] == 1 and runs[0][0] != "the warm run"
    compress(model, 1.15, **run)
    assert calls[-1][0] is None


def _count_plan_timings(monkeypatch) -> list:
    """The (input, plan) pairs LatencyTable.compare times from now on."""
    import onnxmerge.latency.table as table_module

    timings, real = [], table_module.compare_models
    monkeypatch.setattr(
        table_module, "compare_models", lambda *a, **k: timings.append(a) or real(*a, **k)
    )
    return timings


def test_search_says_when_out_of_reach():
    with pytest.raises(OnnxMergeError, match="out of reach"):
        _search_run(1.0, 3.0)
    with pytest.raises(OnnxMergeError, match="not reached") as info:
        _search_run(3.5, 1.4)  # even the fastest plan measures slower than the input
    assert "the latency table predicted up to ~" in str(info.value)  # it misled: say so


@given(
    scale=st.floats(0.3, 2.0),
    speedup=st.floats(1.02, 1.8),
)
@settings(max_examples=60, deadline=None)
def test_search_never_repeats_a_plan_and_keeps_its_promise(scale, speedup):
    """Any mismatch between table and measurement (0.3x-2x), any target: no plan is built
    twice, the unchanged network never, and a result is returned only if it reaches."""
    try:
        found, built, log = _search_run(scale, speedup)
    except OnnxMergeError as exc:
        assert "not reached" in str(exc) or "out of reach" in str(exc)
        return
    assert len(built) == len(set(built)) == found.tries <= 4
    assert found.measured.speedup >= speedup * 0.97, log


def test_search_loosens_an_overshoot():
    # The table is pessimistic (0.7x): the first plan for 1.3x (two merges) measures 2.4x.
    found, built, log = _search_run(0.7, 1.3)
    measured = [float(line.rsplit("= ", 1)[1][:-1]) for line in log if line.startswith("try ")]
    assert measured[0] > 1.3 * 1.1  # overshot ...
    assert (
        1.3 * 0.97 <= found.measured.speedup < measured[0]
    )  # ... and gave some back, still reaching
    assert found.selection.importance == -1.0  # the looser plan: one merge, the most important
    assert len(built) == len(set(built))


def test_search_falls_back_to_the_fastest_plan_when_the_miss_asks_for_more():
    # Convs measure 2x their table time: the first plan is slower than the input; the cut it
    # asks for is below the floor, so the fastest plan is measured next, and reaches.
    found, built, log = _search_run(2.0, 1.4)
    assert len(built) == 2 and found.measured.speedup >= 1.4 * 0.97, log
    assert found.selection.importance == -9.0  # all three merges: the fastest plan


def test_search_measures_the_fastest_plan_before_calling_a_target_out_of_reach():
    # The table over-predicts 5x: by the table 3.0x is out of reach (at most ~2.8x), but the
    # fastest plan measures 7.6x. Every plan overshoots 3.0x + 15%: the closest one is
    # returned and the log says no plan lies in the window.
    found, built, log = _search_run(0.2, 3.0)
    assert any("the table predicts at most" in line for line in log), log
    assert found.measured.speedup >= 3.0 * 0.97
    assert any("window" in line for line in log), log
    assert len(built) == len(set(built)) == found.tries


def test_search_returns_a_plan_inside_the_window_when_there_is_one():
    # An accurate table: 1.3x lies between plans; the result is inside [-3%, +15%].
    found, _, log = _search_run(1.0, 1.3)
    assert 1.3 * 0.97 <= found.measured.speedup <= 1.3 * 1.15, log
    assert not any("window" in line for line in log)


def test_input_latency_cache_is_keyed_by_the_covered_convs(tmp_path, monkeypatch, macs_backend):
    """The input network's time is cached as a ratio to the table's unchanged convs, so a run
    whose candidates cover other convs (a newer version pricing more of them) measures it
    again instead of scaling the old ratio by another sum (a cache shared by two versions
    read 9.8 ms for a 3.1 ms network)."""
    from onnxmerge.kinds.depth.kind import DepthKind

    model = zoo.resnet(18, width=0.25, size=32)
    run = {"kind": "depth", "cache_dir": tmp_path, "progress": False, "calib_count": 8,
           "backend": macs_backend}  # fmt: skip

    def cached(res) -> bool:
        return any(line.startswith("input ") and "(cache)" in line for line in res.log)

    assert not cached(compress(model, 1.2, **run)) and cached(compress(model, 1.2, **run))
    real = DepthKind.costs
    monkeypatch.setattr(
        DepthKind, "costs", lambda self, c: real(self, c) * (2 if self.unchanged(c) else 1)
    )
    assert not cached(compress(model, 1.2, **run))
