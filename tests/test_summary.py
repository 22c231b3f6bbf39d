"""Issue 14: the before -> after summary, plan provenance, --version, and fuse's speed rule.

The summary's counts are checked against numbers computed here from the graph by hand;
provenance against the file's own sha256; fuse's rule with a stand-in backend that times a
model by its MACs, under which a depthwise 3x3 + pointwise 1x1 merged into a dense 3x3 is
slower than the two convs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import __version__, api
from onnxmerge.plan import Plan, PlanGroup
from onnxmerge.summary import model_stats


def dw_pw(c: int = 16, hw: int = 12) -> onnx.ModelProto:
    """x -> depthwise 3x3 (pads 1) -> pointwise 1x1 -> Relu -> Gemm head: one exact run."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), "w_dw"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b_dw"),
        numpy_helper.from_array(rng.standard_normal((c, c, 1, 1)).astype(np.float32), "w_pw"),
        numpy_helper.from_array(rng.standard_normal((10, c)).astype(np.float32), "w_fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["a"], "dw", pads=[1] * 4, group=c),
        helper.make_node("Conv", ["a", "w_pw"], ["b"], "pw"),
        helper.make_node("Relu", ["b"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["f"], "flat"),
        helper.make_node("Gemm", ["f", "w_fc"], ["y"], "fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dwpw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_model_stats_count_what_the_graph_holds() -> None:
    c, hw = 16, 12
    stats = model_stats(dw_pw(c, hw))
    assert (stats.convs, stats.nodes) == (2, 6)
    assert stats.params == c * 9 + c + c * c + 10 * c
    # dw: per output pixel and channel 9 taps; pw: c taps; Gemm: 1 x c x 10.
    assert stats.macs == hw * hw * c * 9 + hw * hw * c * c + c * 10
    assert stats.bytes == dw_pw(c, hw).ByteSize()


def test_fuse_merges_everything_with_all_and_reports_its_counts() -> None:
    fused, report = api.fuse(dw_pw())  # the API merges every exact run by default
    assert report.convs_after == 1 and report.summary.after.convs == 1
    assert report.summary.before == model_stats(dw_pw())
    assert report.summary.after_ms is None  # nothing was timed


class MacClock:
    """Stand-in backend timing: a model takes 1 ns per MAC (no runtime involved)."""

    name = "mac-clock"

    def __init__(self, **_: Any) -> None:
        from onnxmerge.latency import Backend, MeasurePolicy

        policy = MeasurePolicy(warmup_runs=1, warmup_s=0, block_s=0, min_block=1,
                               max_block=1, window=1, max_s=0)  # fmt: skip

        class _Clock(Backend):
            name = "mac-clock"

            def _fingerprint_impl(self) -> dict[str, Any]:
                return {"clock": "macs"}

            def load(self, onnx_bytes: bytes) -> Any:
                return model_stats(onnx.load_from_string(onnx_bytes)).macs

            def _run_once(self, prepared: Any) -> None:
                pass

            def _time_once(self, prepared: Any) -> float:
                return prepared[0] * 1e-9 + 1e-6

        self.backend = _Clock(policy=policy)


def test_fuse_skips_a_merge_the_backend_runs_slower(tmp_path, monkeypatch) -> None:
    import onnxmerge.fuse as fuse_module

    monkeypatch.setattr(fuse_module, "get_backend", lambda name, **kw: MacClock().backend)
    fused, report = api.fuse(dw_pw(), all_runs=False, cache_dir=tmp_path, progress=False)
    assert report.convs_after == 2, "the dense 3x3 would cost 4x the MACs: not merged"
    assert report.summary.before_ms and report.summary.after_ms
    merged, _ = api.fuse(dw_pw(), all_runs=True)
    assert sum(n.op_type == "Conv" for n in merged.graph.node) == 1


def test_cli_version_and_quiet_fuse(run_cli, tmp_path) -> None:
    r = run_cli("--version")
    assert r.rc == 0 and r.stdout.strip() == f"onnxmerge {__version__}"
    src = tmp_path / "m.onnx"
    onnx.save(dw_pw(), src)
    r = run_cli("fuse", src, tmp_path / "out.onnx", "--all", "-q", "--json")
    assert r.rc == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["before"]["convs"] == 2 and summary["after"]["convs"] == 1
    assert r.stderr == ""  # no progress bars, no ONNX Runtime log
    # Without -q but with stderr not a terminal (a log, CI), the timing fuse does leaves no
    # progress bar behind either (a bar there cannot erase itself).
    r = run_cli("fuse", src, tmp_path / "timed.onnx", "--cache", tmp_path / "c")
    assert r.rc == 0 and "\r" not in r.stderr and "conv/s" not in r.stderr, r.stderr


def test_plan_provenance_round_trip_and_old_plans_load(tmp_path) -> None:
    from partitions import segs

    from onnxmerge import zoo
    from onnxmerge.compress import build, provenance
    from onnxmerge.kinds.depth.kind import DepthKind, groups_from_segments

    path = tmp_path / "r.onnx"
    onnx.save(zoo.resnet(18, width=0.25, size=32), path)
    analysis = api.analyze(path)
    chains = [mc.chain for mc in analysis.match.chains]
    groups = groups_from_segments(chains, segs({1: [(0, 4, (3, 4))]}), match=analysis.match)
    plan = Plan(
        "layermerge", "ort-cpu", 1.5, 1.0, 1.0, 2.0, 1.0, groups, {},
        **provenance(analysis, None, 16, 7),
    )  # fmt: skip
    d = json.loads(plan.to_json())
    assert d["schema"] == 2 and d["onnxmerge_version"] == __version__
    assert d["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert d["source"]["input_shapes"] == {"input": [1, 3, 32, 32]}
    assert d["calibration"] == {
        "source": "built-in",
        "count": 16,
        "seed": 7,
        "preprocess": {
            "mode": "torch",
            "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375],
            "bgr": False,
        },
    }
    (g,) = d["groups"]
    chain = chains[1]
    assert g["changed"] and g["pruned"] == [1, 2]
    assert g["pruned_convs"] == [chain.conv(1).name, chain.conv(2).name]
    slots = analysis.match.chains[1].slots
    assert g["removed_activations"] == [n.name for p in (1, 2, 3) for n in slots[p - 1].act]
    assert Plan.from_json(plan.to_json()) == plan
    # A schema-1 plan (no provenance, groups without names) still loads and rebuilds.
    old = {k: v for k, v in d.items() if k in ("method", "backend", "target_speedup",
           "budget_ms", "predicted_ms", "measured_input_ms", "measured_output_ms")}  # fmt: skip
    old["groups"] = [{k: g[k] for k in ("chain", "start", "end", "kept", "kernel",
                      "latency_ms", "importance", "activation_kept")}]  # fmt: skip
    loaded = Plan.from_json(json.dumps(old))
    assert loaded.schema == 1 and isinstance(loaded.groups[0], PlanGroup)
    items = DepthKind().from_record(analysis, loaded)
    assert build(analysis, DepthKind(), items)[0].graph.node


@pytest.mark.slow
def test_compress_summary_reports_held_out_fidelity(tmp_path) -> None:
    """With calibration data of one's own and no --eval, the summary scores on the held-out
    half and says the search chose on it."""
    from onnxmerge import zoo

    arr = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "c.npz", a=arr)
    res = api.compress(
        zoo.resnet(18, width=0.25, size=64), "max", cache_dir=tmp_path, progress=False,
        calib=tmp_path / "c.npz", calib_count=8,
    )  # fmt: skip
    t = res.table
    assert t.before.convs > t.after.convs and t.before_ms / t.after_ms > 1.0
    (name,) = t.fidelity
    assert {"top1", "kl", "r2"} <= set(t.fidelity[name]) and 0 <= t.fidelity[name]["top1"] <= 1
    from onnxmerge.importance import holdout_split

    assert t.fidelity_inputs == len(holdout_split(list(range(8)))[1])
    lines = res.summary()
    assert any("held-out calibration inputs" in line for line in lines)
    assert any("the search chose among plans on them" in line for line in lines)


def test_summary_says_when_fidelity_was_measured_on_random_fields(tmp_path, monkeypatch):
    """Without scikit-image (and no --calib) calibration has only smooth random fields: the
    summary must not present their agreement as if it were the user's data's."""
    import sys

    from onnxmerge import photos, zoo

    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    monkeypatch.setattr(photos, "available", lambda colour_only=False: [])  # nor any other
    res = api.compress(
        zoo.resnet(18, width=0.25, size=32), "max", cache_dir=tmp_path, progress=False,
        calib_count=4, kind="depth",
    )  # fmt: skip
    assert any("calibration data: smooth random fields" in line for line in res.log)
    (line,) = [x for x in res.summary() if x.startswith("output ")]
    assert "random fields the search never saw (not real data" in line


def test_summary_line_counts_one_input_in_the_singular() -> None:
    from onnxmerge.calibration.evaluation import RANDOM_FIELDS
    from onnxmerge.summary import ModelStats, Summary

    stats = ModelStats(1, 1, 1, 1, 1)
    m = {"y": {"top1": 1.0, "kl": 0.0}}
    for n, words in ((1, "1 held-out calibration input:"), (3, "3 held-out calibration inputs:")):
        lines = Summary(stats, stats, fidelity=m, fidelity_inputs=n).lines()
        assert f"on {words}" in lines[-2] and "the search chose among plans on them" in lines[-1]
    one = Summary(stats, stats, fidelity=m, fidelity_inputs=1, fidelity_on=RANDOM_FIELDS)
    assert "on 1 random field the search never saw (not real data" in one.lines()[-1]


def test_fidelity_names_the_worst_channel_a_whole_tensor_error_hides() -> None:
    """A detector-like output: 4 box channels in pixels and a faint score channel (~1e-4).
    The compressed model wipes the scores out: the whole-tensor error stays ~1e-7, the worst
    channel says what happened."""
    from onnxmerge.summary import fidelity

    def scaled(scale: list[float]) -> onnx.ModelProto:
        k = numpy_helper.from_array(np.array(scale, np.float32).reshape(1, 5, 1), "k")
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "k"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 50])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 50])],
            [k],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(3):
        x = rng.uniform(0, 640, (1, 5, 50)).astype(np.float32)
        x[:, 4] *= 1e-7
        feeds.append({"x": x})
    m = fidelity(scaled([1, 1, 1, 1, 1]), scaled([1, 1, 1, 1, 0.05]), feeds)["y"]
    assert m["rel_error"] < 1e-6
    assert m["worst_channel"] == 4 and m["worst_rel_error"] == pytest.approx(0.95, rel=1e-3)


def test_changed_line_counts_the_activations_removed_not_the_interior_positions() -> None:
    """A group merging a projection conv (no activation) with the next block's expansion
    removes one activation fewer than it has interior positions (a review found "7 removed"
    over a list of 6)."""
    from onnxmerge.result import _depth_lines

    merged = PlanGroup("c", 0, 3, [1, 2, 3], [1, 1], 0.1, -0.2, "Relu",
                       convs=["a", "b", "c"], removed_activations=["relu_b"])  # fmt: skip
    old = PlanGroup("c", 3, 5, [4, 5], [1, 1], 0.1, -0.1, None)  # a plan without names
    plan = Plan("layermerge", "ort-cpu", 1.2, 1.0, 1.0, 1.0, 1.0, [merged, old])
    (line,) = [x for x in _depth_lines(plan) if x.startswith("changed:")]
    assert "2 activations removed" in line  # 1 named + 1 interior position of the old group
    plan.groups = [merged]
    assert "1 activation removed" in _depth_lines(plan)[0]


@pytest.mark.parametrize("weight", [1.0, 1e-9])
def test_fidelity_warns_when_the_originals_output_hardly_varies(weight) -> None:
    """A classifier whose logits barely depend on the input (a random-weight export: a review
    read "top-1 agreement 1.00, KL 1e-16" off one whose logits varied by 3e-7) gets its
    agreement marked as saying little; a normal one does not."""
    from onnxmerge.summary import ModelStats, Summary, fidelity

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 10)) * weight).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w, b],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(4)]
    m = fidelity(model, model, feeds)
    stats = ModelStats(1, 1, 1, 1, 1)
    line = Summary(stats, stats, fidelity=m, fidelity_inputs=4).lines()[-2]
    assert m["y"]["top1"] == 1.0
    assert ("flat" in m["y"]) == (weight < 1) and ("say little" in line) == (weight < 1)


def _gemm_classifier(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
        [
            numpy_helper.from_array(w.astype(np.float32), "w"),
            numpy_helper.from_array(b.astype(np.float32), "b"),
        ],  # fmt: skip
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fidelity_r2_and_one_class() -> None:
    """R² against float64 numpy on row-centred log-probabilities: 1 for the model itself, ~0
    for a model that ignores its input (only its average survives); a classifier whose top-1
    is one class on every input is marked (a review read "top-1 agreement 1.00" off random
    weights whose every prediction was one class), and the summary line says so."""
    from onnxmerge.summary import ModelStats, Summary, fidelity

    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((8, 10)), rng.standard_normal(10)
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(64)]
    model = _gemm_classifier(w, b)
    assert fidelity(model, model, feeds)["y"]["r2"] == pytest.approx(1.0)
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    logits = x @ w + b
    mean = _gemm_classifier(np.zeros_like(w), logits.mean(0))  # its average logits only
    m = fidelity(model, mean, feeds)["y"]
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    lp -= lp.mean(1, keepdims=True)
    lo = logits.mean(0) - np.log(np.exp(logits.mean(0)).sum())
    lo = lo - lo.mean()
    expected = 1 - np.sum((lp - lo) ** 2) / np.sum((lp - lp.mean(0)) ** 2)
    assert m["r2"] == pytest.approx(expected, rel=1e-4) and abs(m["r2"]) < 0.1
    assert "one_class" not in m
    biased = _gemm_classifier(w, b + 100.0 * (np.arange(10) == 3))
    m = fidelity(biased, biased, feeds)["y"]
    assert m["one_class"] == 3 and m["top1"] == 1.0
    stats = ModelStats(1, 1, 1, 1, 1)
    line = Summary(stats, stats, fidelity={"y": m}, fidelity_inputs=64).lines()[-2]
    assert "class 3 on every one" in line and "R² 1 over them" in line


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 40))
def test_top1_agreement_carries_its_standard_error(n) -> None:
    """A classifier's agreement over n inputs is a proportion: the summary gives its binomial
    standard error sqrt(p (1 - p) / n) beside it (a review read 0.88 against 0.81 on 32
    inputs as a difference), and leaves it out where every input agrees or disagrees."""
    from onnx import TensorProto, helper

    from onnxmerge.summary import ModelStats, Summary, fidelity

    io = helper.make_tensor_value_info
    shift = helper.make_tensor("s", TensorProto.FLOAT, [1, 4], [0.0, 0.0, 0.0, 0.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "s"], ["y"])], "g",
                              [io("x", TensorProto.FLOAT, [1, 4])],
                              [io("y", TensorProto.FLOAT, [1, 4])], [shift])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(n)
    feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(n)]
    other = onnx.ModelProto()
    other.CopyFrom(model)  # adds 10 to class 0: moves the top-1 of the inputs where it is not
    other.graph.initializer[0].CopyFrom(
        helper.make_tensor("s", TensorProto.FLOAT, [1, 4], [10.0, 0.0, 0.0, 0.0])
    )
    m = fidelity(model, other, feeds)["y"]
    p = np.mean([f["x"].argmax() == 0 for f in feeds])
    assert m["top1"] == pytest.approx(p)
    assert m["top1_se"] == pytest.approx(np.sqrt(p * (1 - p) / n))
    stats = ModelStats(1, 1, 1, 1, 1)
    line = Summary(stats, stats, fidelity={"y": m}, fidelity_inputs=n).lines()[-2]
    assert (f"± {m['top1_se']:.2f}" in line) == (0 < p < 1)


def test_model_stats_count_a_conv_transpose() -> None:
    """A ConvTranspose is a conv node, and each input element meets (O / groups) x kh x kw
    weights: a 4-channel 5 x 5 input, 6 outputs in 2 groups, 3 x 3: 4*25 * 3*9 MACs."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], "up", kernel_shape=[3, 3],
                            strides=[2, 2], group=2)  # fmt: skip
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    stats = model_stats(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert (stats.convs, stats.macs) == (1, 4 * 25 * 3 * 9)


def test_a_negative_r2_is_said_in_words() -> None:
    """A small relative error beside an output that varies little: R² < 0 gets a caveat, a
    positive one none."""
    from onnxmerge.summary import ModelStats, Summary

    stats = ModelStats(1, 1, 1, 1, 1)
    for r2, said in ((-1.2, True), (0.4, False)):
        m = {"y": {"rel_error": 0.0255, "r2": r2}}
        (line,) = [x for x in Summary(stats, stats, fidelity=m, fidelity_inputs=4).lines()
                   if x.startswith("output")]  # fmt: skip
        assert ("no closer to the original than its average output" in line) == said
