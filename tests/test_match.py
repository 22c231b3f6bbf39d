"""The matcher on real architectures and exporter idioms: chains, residuals, breaks, activations.

Zoo models are checked for their known structure (residual intervals, chain lengths) and
for a clean `inspect` and an exact `fuse` (ONNX Runtime as reference). Small hand-written
graphs check each activation spelling and each exporter idiom the normalizer undoes.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import init_batchnorm
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import api, zoo
from onnxmerge.graph import normalize

SMALL = {"width": 0.25, "size": 64}


def zoo_kwargs(name: str) -> dict:
    return {"size": 64} if name == "yolo" else dict(SMALL)


@functools.cache
def zoo_model(name: str, **kw) -> onnx.ModelProto:
    return zoo.MODELS[name](**(kw or zoo_kwargs(name)))


def ort_outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {
        v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(
            np.float32
        )
        for v in model.graph.input
        if v.name not in inits
    }


def rel_error(a: onnx.ModelProto, b: onnx.ModelProto) -> float:
    feeds = random_feeds(a)
    worst = 0.0
    for x, y in zip(ort_outputs(a, feeds), ort_outputs(b, feeds), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30)))
    return worst


def residuals(report: dict) -> list[dict]:
    return [r for c in report["chains"] for r in c["residuals"]]


# ------------------------------------------------------------------ zoo structure


@pytest.mark.parametrize(
    ("depth", "width", "total", "via_shortcut"), [(18, 0.5, 8, 3), (50, 0.25, 16, 4)]
)
def test_resnet_residual_intervals(depth, width, total, via_shortcut):
    report = api.inspect(zoo.resnet(depth, width=width, size=64))
    res = residuals(report)
    assert report["total"]["residuals"] == len(res) == total
    assert sum(r["shortcut"] is not None for r in res) == via_shortcut
    assert report["unmatched"] == []
    main = max(report["chains"], key=lambda c: c["length"])
    assert len(main["residuals"]) == total  # all in the one chain after the stem
    assert main["length"] == (16 if depth == 18 else 48)
    assert main["breaks"] == []
    # the block structure: basic blocks span 2 convs, bottlenecks 3
    assert {r["end"] - r["start"] for r in res} == {2 if depth == 18 else 3}


def test_mobilenet_v2_structure():
    report = api.inspect(zoo.mobilenet_v2(width=1.0, size=64))
    assert report["total"]["residuals"] == 10
    assert [c["length"] for c in report["chains"]] == [52]
    chain = report["chains"][0]
    assert chain["mergeable"] and chain["breaks"] == []
    assert all(r["shortcut"] is None for r in chain["residuals"])
    acts = [p["activation"] for p in chain["positions"]]
    assert set(acts) == {"relu6", None}
    # every projection conv (linear bottleneck) has no activation: 17 blocks
    assert acts.count(None) == 17
    depthwise = [p for p in chain["positions"] if p["groups"] > 1]
    assert len(depthwise) == 17 and all(p["groups"] == p["in_channels"] for p in depthwise)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_inspect_and_fuse_exact(name):
    model = zoo_model(name)
    report = api.inspect(model)
    assert report["total"]["chains"] == len(report["chains"]) > 0
    assert report["total"]["convs"] + sum(
        r["shortcut"] is not None for r in residuals(report)
    ) + len(report["unmatched"]) == sum(n.op_type == "Conv" for n in model.graph.node)
    json.dumps(report)  # JSON-ready
    fused, fr = api.fuse(model)
    onnx.checker.check_model(fused)
    assert fr.convs_after <= fr.convs_before
    assert rel_error(model, fused) <= 1e-5
    assert fr.max_rel <= 1e-5
    assert all(g.border is None for g in fr.groups)


def test_zoo_fuse_merges_where_it_can():
    # MobileNetV2 at width 0.25: the first block's projection and the next expansion are
    # linear and 1x1 -> merged.
    _, fr = api.fuse(zoo_model("mobilenet_v2"))
    assert fr.merged_groups >= 1 and fr.convs_after < fr.convs_before


def test_se_branches_not_mergeable():
    for name in ("mobilenet_v3", "efficientnet_b0"):
        report = api.inspect(zoo_model(name))
        se = [c for c in report["chains"] if not c["mergeable"]]
        assert se, name
        for c in se:
            assert "squeeze-excitation" in c["note"]
            assert c["valid_segments"] == 0
            assert all(p["in_hw"] == [1, 1] for p in c["positions"])
        # spatial chains stay mergeable
        assert any(c["mergeable"] and c["length"] > 1 for c in report["chains"])


def test_yolo_reports_chains():
    model = zoo_model("yolo")
    ops = {n.op_type for n in model.graph.node}
    assert {"Split", "Concat", "Resize"} <= ops
    report = api.inspect(model)
    assert report["total"]["chains"] >= 5
    # convs reading a Split output or a Concat start chains there
    sources = " ".join(c["input_from"] for c in report["chains"])
    assert "Concat" in sources and "Split" in sources


def test_mobilenet_v3_decomposed_hardswish():
    for decomposed in (False, True):
        model = zoo.mobilenet_v3(width=0.25, size=64, decomposed=decomposed)
        if decomposed:
            assert not any(n.op_type == "HardSwish" for n in model.graph.node)
        report = api.inspect(model)
        spatial = [c for c in report["chains"] if c["mergeable"]]  # not the SE gates
        acts = {p["activation"] for c in spatial for p in c["positions"]}
        assert acts == {"hardswish", "relu", None}, acts
        fused, fr = api.fuse(model)
        assert rel_error(model, fused) <= 1e-5


# ------------------------------------------------------------------ small graphs


class G:
    """Tiny onnx.helper graph builder: x (1, C, H, W) -> ... -> outputs."""

    def __init__(self, c: int = 4, hw: int = 8, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.c, self.hw = c, hw
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value, p: str = "k") -> str:
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def scalar(self, v: float) -> str:
        return self.const(np.float32(v))

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_n", **attrs))
        return out

    def weight(self, cout: int, cin: int, k: int) -> np.ndarray:
        return self.rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)).astype(np.float32)

    def conv(self, x: str, k: int = 3, cout: int | None = None) -> str:
        cout = cout or self.c
        w = self.const(self.weight(cout, self.c, k), "W")
        b = self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "B")
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4)

    def model(self, outputs: list[str], opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, self.c, self.hw, self.hw])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


def _relu(g, x):
    return g.op("Relu", [x])


def _relu6_inputs(g, x):
    return g.op("Clip", [x, g.scalar(0), g.scalar(6)])


def _relu_clip_min_only(g, x):
    return g.op("Clip", [x, g.scalar(0)])


def _silu(g, x):
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def _silu_swapped(g, x):
    return g.op("Mul", [g.op("Sigmoid", [x]), x])


def _hardswish_op(g, x):
    return g.op("HardSwish", [x])


def _hardswish_hardsigmoid(g, x):
    return g.op("Mul", [x, g.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])


def _hardswish_decomposed_div(g, x):  # Paddle: x * Clip(x + 3, 0, 6) / 6
    c = g.op("Clip", [g.op("Add", [x, g.scalar(3)]), g.scalar(0), g.scalar(6)])
    return g.op("Div", [g.op("Mul", [x, c]), g.scalar(6)])


def _hardswish_decomposed_mul(g, x):  # the same with "* (1/6)"
    c = g.op("Clip", [g.op("Add", [x, g.scalar(3)]), g.scalar(0), g.scalar(6)])
    return g.op("Mul", [g.op("Mul", [x, c]), g.scalar(1 / 6)])


def _leaky(g, x):
    return g.op("LeakyRelu", [x], alpha=0.1)


def _prelu_channel(g, x):
    return g.op("PRelu", [x, g.const(np.full((g.c, 1, 1), 0.25, np.float32))])


def _prelu_scalar(g, x):
    return g.op("PRelu", [x, g.const(np.array([0.25], np.float32))])


def _gelu_erf_half_first(g, x):  # (x * 0.5) * (1 + erf(x / sqrt(2)))
    e = g.op("Erf", [g.op("Div", [x, g.scalar(np.sqrt(2.0))])])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [e, g.scalar(1.0)])])


def _gelu_erf_torch(g, x):  # torch.onnx.export (opset < 20): (x * (erf(x / sqrt(2)) + 1)) * 0.5
    e = g.op("Erf", [g.op("Div", [x, g.scalar(np.sqrt(2.0))])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [e, g.scalar(1.0)])]), g.scalar(0.5)])


def _gelu_op(g, x):
    return g.op("Gelu", [x])


def _gelu_tanh(g, x):  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    inner = g.op("Add", [x, g.op("Mul", [g.op("Pow", [x, g.scalar(3)]), g.scalar(0.044715)])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.scalar(np.sqrt(2 / np.pi))])])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [t, g.scalar(1)])])


ACTIVATIONS = [
    pytest.param(_relu, "relu", 17, id="relu"),
    pytest.param(_relu6_inputs, "relu6", 17, id="relu6-clip-inputs"),
    pytest.param(_relu_clip_min_only, "relu", 17, id="relu-clip-min-only"),
    pytest.param(_silu, "silu", 17, id="silu"),
    pytest.param(_silu_swapped, "silu", 17, id="silu-swapped"),
    pytest.param(_hardswish_op, "hardswish", 17, id="hardswish-op"),
    pytest.param(_hardswish_hardsigmoid, "hardswish", 17, id="hardswish-hardsigmoid"),
    pytest.param(_hardswish_decomposed_div, "hardswish", 17, id="hardswish-decomposed-div"),
    pytest.param(_hardswish_decomposed_mul, "hardswish", 17, id="hardswish-decomposed-mul"),
    pytest.param(_leaky, "leaky_relu", 17, id="leaky_relu"),
    pytest.param(_prelu_channel, "prelu", 17, id="prelu-channel"),
    pytest.param(_prelu_scalar, "prelu", 17, id="prelu-scalar"),
    pytest.param(_gelu_erf_half_first, "gelu", 17, id="gelu-erf-half-first"),
    pytest.param(_gelu_erf_torch, "gelu", 17, id="gelu-erf-torch"),
    pytest.param(_gelu_op, "gelu", 20, id="gelu-op"),
    pytest.param(_gelu_tanh, "gelu", 17, id="gelu-tanh"),
]


@pytest.mark.parametrize(("make", "kind", "opset"), ACTIVATIONS)
def test_activation_kinds(make, kind, opset):
    g = G()
    y = g.conv(g.conv(make(g, g.conv("x")), k=1), k=1)  # conv -act- conv -linear- conv
    model = g.model([y], opset=opset)
    report = api.inspect(model)
    assert len(report["chains"]) == 1
    chain = report["chains"][0]
    assert [p["activation"] for p in chain["positions"]] == [kind, None, None]
    assert chain["breaks"] == []
    fused, fr = api.fuse(model)
    assert fr.merged_groups == 1 and fr.convs_after == 2  # convs 2-3 merge, 1 keeps its act
    assert rel_error(model, fused) <= 1e-5


def test_relu6_clip_attribute_form_opset10():
    g = G()
    y = g.conv(g.op("Clip", [g.conv("x")], min=0.0, max=6.0))
    model = g.model([y], opset=10)
    chain = api.inspect(model)["chains"][0]
    assert [p["activation"] for p in chain["positions"]] == ["relu6", None]


def test_clip_other_bounds_is_clip():
    g = G()
    y = g.conv(g.op("Clip", [g.conv("x"), g.scalar(-1), g.scalar(1)]))
    chain = api.inspect(g.model([y]))["chains"][0]
    assert chain["positions"][0]["activation"] == "clip"


def test_activation_region_with_outside_input_is_not_an_activation():
    # Mul(conv, other tensor) is not pointwise-with-constants: the chain ends there.
    g = G()
    a = g.conv("x")
    y = g.conv(g.op("Mul", [a, "x"]))
    report = api.inspect(g.model([y]))
    assert sorted(c["length"] for c in report["chains"]) == [1, 1]


def _gelu_tanh_cubed_half_last(g, x):  # x*x*x instead of Pow, the 0.5 applied last
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.scalar(0.044715)])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.scalar(np.sqrt(2 / np.pi))])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [t, g.scalar(1)])]), g.scalar(0.5)])


def _silu_by_exp(g, x):  # x / (1 + exp(-x))
    e = g.op("Exp", [g.op("Neg", [x])])
    return g.op("Div", [x, g.op("Add", [g.scalar(1.0), e])])


def _relu_by_max(g, x):
    return g.op("Max", [x, g.scalar(0.0)])


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_gelu_tanh_cubed_half_last, "gelu"), (_silu_by_exp, "silu"), (_relu_by_max, "relu")],
)
def test_activation_recognised_by_what_it_computes(make, kind):
    g = G()
    y = g.conv(g.conv(make(g, g.conv("x")), k=1), k=1)
    model = g.model([y])
    chain = api.inspect(model)["chains"][0]
    assert [p["activation"] for p in chain["positions"]] == [kind, None, None]
    fused, fr = api.fuse(model)
    assert fr.convs_after == 2
    assert rel_error(model, fused) <= 1e-5


def test_identity_nodes_between_ops_do_not_break_chains():
    # PP-OCRv6 writes Identity between each conv and its activation; one also ends the graph.
    g = G()
    a = g.op("Relu", [g.op("Identity", [g.conv("x")])])
    b = g.op("Identity", [g.op("Identity", [g.conv(a, k=1)])])
    y = g.op("Identity", [g.conv(b, k=1)])
    model = g.model([y])
    (chain,) = api.inspect(model)["chains"]
    assert chain["length"] == 3
    assert [p["activation"] for p in chain["positions"]] == ["relu", None, None]
    fused, fr = api.fuse(model)
    assert fr.convs_after == 2  # the two 1x1 convs with nothing between them merge
    assert [o.name for o in fused.graph.output] == [y]  # the output keeps its name
    assert rel_error(model, fused) <= 1e-5


def test_affine_region_is_not_an_activation():
    # Add(a, a) = 2a is pointwise on one tensor but linear: nothing to remove, the chain ends.
    g = G()
    a = g.conv("x", k=1)
    y = g.conv(g.op("Add", [a, a]), k=1)
    report = api.inspect(g.model([y]))
    assert sorted(c["length"] for c in report["chains"]) == [1, 1]
    assert all(p["activation"] is None for c in report["chains"] for p in c["positions"])


def test_trailing_scale_after_a_normalised_activation_is_its_own_affine():
    # Relu already has slope 1: the "* 0.5" after it does not normalise it, it is the
    # activation's own affine (match.regions): the chain runs through, and removing the
    # activation leaves x * 0.5, not the identity.
    g = G()
    a = g.op("Relu", [g.conv("x", k=1)])
    y = g.conv(g.op("Mul", [a, g.scalar(0.5)]), k=1)
    report = api.inspect(g.model([y]))
    (chain,) = report["chains"]
    assert chain["length"] == 2
    assert chain["positions"][0]["activation"] == "relu"
    assert chain["positions"][0]["activation_affine"]


def test_constant_broadcast_over_width_is_not_per_channel():
    # A (W,) constant broadcasts along the last axis: not a per-channel activation parameter.
    g = G(c=4, hw=4)
    a = g.conv("x", k=1)
    slope = g.const(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    y = g.conv(g.op("PRelu", [a, slope]), k=1)
    report = api.inspect(g.model([y]))
    assert sorted(c["length"] for c in report["chains"]) == [1, 1]


# ------------------------------------------------------------------ exporter idioms


def test_weights_behind_identity_nodes():
    """Legacy torch exports route shared weights through Identity nodes."""
    g = G()
    w = g.op("Identity", [g.const(g.weight(4, 4, 3), "W")])
    b = g.op("Identity", [g.const(np.zeros(4, np.float32), "B")])
    a = g.op("Conv", ["x", w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.conv(g.conv(g.op("Relu", [a]), k=1))
    model = g.model([y])
    report = api.inspect(model)
    assert [c["length"] for c in report["chains"]] == [3]
    assert report["unmatched"] == []
    fused, _ = api.fuse(model)
    assert rel_error(model, fused) <= 1e-5


def test_chunk_written_as_shape_arithmetic():
    """Legacy torch exports write x.chunk(2, dim=1) as Shape -> Gather -> Div -> Slice; the
    Slice bounds fold once shapes are known, so the convs after it know their input shape."""
    g = G()
    a = g.conv("x")
    i64 = functools.partial(np.array, dtype=np.int64)
    half = g.op("Div", [g.op("Gather", [g.op("Shape", [a]), g.const(i64(1))]), g.const(i64(2))])
    end = g.op("Unsqueeze", [half, g.const(i64([0]))])
    lo = g.op("Slice", [a, g.const(i64([0])), end, g.const(i64([1]))])
    w, b = g.const(g.weight(4, 2, 1), "W"), g.const(np.zeros(4, np.float32), "B")
    y = g.conv(g.op("Conv", [lo, w, b], kernel_shape=[1, 1]), k=1)
    model = g.model([y])
    del model.graph.value_info[:]  # as exported: no intermediate shapes
    report = api.inspect(model)
    assert report["unmatched"] == []
    assert sorted(c["length"] for c in report["chains"]) == [1, 2]
    fused, fr = api.fuse(model)
    assert fr.convs_after == 2
    assert rel_error(model, fused) <= 1e-5


def test_weights_from_constant_nodes():
    """Paddle (and some torch versions) emit weights as Constant nodes."""
    g = G()
    convs = []
    x = "x"
    for k in (3, 1, 3):
        w = g.op("Constant", [], value=numpy_helper.from_array(g.weight(4, 4, k)))
        bias = g.op("Constant", [], value=numpy_helper.from_array(np.ones(4, np.float32)))
        x = g.op("Conv", [x, w, bias], kernel_shape=[k, k], pads=[0] * 4)
        convs.append(x)
    model = g.model([x])
    report = api.inspect(model)
    assert [c["length"] for c in report["chains"]] == [3]
    assert report["unmatched"] == []
    fused, fr = api.fuse(model)
    assert fr.convs_after == 1  # no padding anywhere: exact, one conv
    assert rel_error(model, fused) <= 1e-5


def test_unfolded_batchnorm_is_folded():
    g = G()
    params = [np.full(4, v, np.float32) for v in (1.5, 0.2, -0.3, 0.8)]
    a = g.op("BatchNormalization", [g.conv("x")] + [g.const(p) for p in params], epsilon=1e-5)
    b = g.op(
        "BatchNormalization",
        [g.conv(g.op("Relu", [a]), k=1)] + [g.const(p) for p in params],
        epsilon=1e-5,
    )
    y = g.conv(b, k=1)
    model = g.model([y])
    graph = normalize(model)
    assert not any(n.op == "BatchNormalization" for n in graph.nodes)
    chain = api.inspect(model)["chains"][0]
    assert [p["activation"] for p in chain["positions"]] == ["relu", None, None]
    fused, fr = api.fuse(model)
    assert fr.convs_after == 2
    assert not any(n.op_type == "BatchNormalization" for n in fused.graph.node)
    assert rel_error(model, fused) <= 1e-5


def save_external(model: onnx.ModelProto, path: Path, **kw) -> None:
    """Save with every tensor in a .data file (on a copy: onnx rewrites the proto it saves)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, size_threshold=0, **kw)


def test_external_data_model_loads_and_matches(tmp_path):
    model = zoo_model("resnet18")
    path = tmp_path / "resnet18.onnx"
    save_external(model, path, all_tensors_to_one_file=True, location="resnet18.onnx.data")
    assert (tmp_path / "resnet18.onnx.data").stat().st_size > path.stat().st_size
    from_file = api.inspect(path)
    assert from_file == api.inspect(model)
    fused, fr = api.fuse(path, tmp_path / "fused.onnx")
    assert rel_error(model, onnx.load(str(tmp_path / "fused.onnx"))) <= 1e-5


# ------------------------------------------------------------------ breaks


def test_tensor_used_outside_the_chain_is_a_break():
    g = G()
    a = g.conv("x")
    b = g.conv(a, k=1)
    y = g.conv(b)
    side = g.op("ReduceMean", [b], keepdims=1)  # b is needed beyond the chain
    model = g.model([y, side])
    report = api.inspect(model)
    chain = report["chains"][0]
    assert chain["length"] == 3
    assert [br["position"] for br in chain["breaks"]] == [2]
    assert "ReduceMean" in chain["breaks"][0]["reason"]
    # no valid segment straddles position 2
    fused, fr = api.fuse(model)
    assert fr.convs_after == 2  # (0, 2] merges (conv 2 is 1x1, unpadded), conv 3 stays
    assert rel_error(model, fused) <= 1e-5


def test_intermediate_graph_output_is_a_break():
    g = G()
    a = g.conv("x", k=1)
    y = g.conv(a, k=1)
    report = api.inspect(g.model([y, a]))
    chain = report["chains"][0]
    breaks = [(b["position"], b["reason"]) for b in chain["breaks"]]
    assert breaks == [(1, "also used by a graph output")]


def test_add_of_outside_tensor_is_a_break():
    g = G()
    other = g.op("Relu", ["x"])
    a = g.conv("x", k=1)
    b = g.op("Add", [g.conv(a, k=1), g.op("Sigmoid", [other])])
    y = g.conv(b, k=1)
    model = g.model([y])
    chain = max(api.inspect(model)["chains"], key=lambda c: c["length"])
    reasons = {b["position"]: b["reason"] for b in chain["breaks"]}
    assert 2 in reasons and "outside the chain" in reasons[2]
    assert list(reasons) == [2]  # the Add's input (position 1) is no break: 1-2 still merge
    fused, fr = api.fuse(model)
    assert fr.merged_groups == 1 and fr.convs_after == 2  # (0, 2] into one conv, the Add stays
    assert rel_error(model, fused) <= 1e-5


def test_add_of_outside_shortcut_conv_is_the_same_break():
    # The skip is a conv reading a branch point outside the chain: the same single break.
    g = G()
    other = g.op("Sigmoid", [g.op("Relu", ["x"])])
    a = g.conv("x", k=1)
    b = g.op("Add", [g.conv(a, k=1), g.conv(other, k=1)])
    y = g.conv(b, k=1)
    model = g.model([y, g.op("Relu", [other])])
    report = api.inspect(model)
    chain = max(report["chains"], key=lambda c: c["length"])
    reasons = {b["position"]: b["reason"] for b in chain["breaks"]}
    assert list(reasons) == [2] and "outside the chain" in reasons[2]
    fused, fr = api.fuse(model)
    assert fr.convs_after == 3  # (0, 2] merges; the outside conv and conv 3 stay
    assert rel_error(model, fused) <= 1e-5


# ------------------------------------------------------------------ CLI: --json vs text

TOTAL_RE = re.compile(
    r"^total: (\d+) chains, (\d+) convs, (\d+) residual intervals, (\d+) valid segments$", re.M
)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_inspect_json_matches_text(name, tmp_path, run_cli):
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(zoo_model(name), str(path))
    text, js = run_cli.many([["inspect", path], ["inspect", path, "--json"]])
    assert text.rc == 0 and js.rc == 0, (text.stderr, js.stderr)
    report = json.loads(js.stdout)
    m = TOTAL_RE.search(text.stdout)
    assert m, text.stdout
    t = report["total"]
    assert tuple(map(int, m.groups())) == (
        t["chains"],
        t["convs"],
        t["residuals"],
        t["valid_segments"],
    )
    assert report == json.loads(json.dumps(api.inspect(path)))
    for c in report["chains"]:
        assert f"{c['name']}: {c['length']} convs" in text.stdout


# ------------------------------------------------------------------ torch exports


def _torch_nets():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.short is None else self.short(x)))

    class TinyResNet(nn.Module):
        residuals, shortcuts = 4, 1

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
            self.blocks = nn.Sequential(
                Basic(8, 8, 1), Basic(8, 8, 1), Basic(8, 16, 2), Basic(16, 16, 1)
            )
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            h = cin * t
            self.use_res = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, h, 1, bias=False),
                nn.BatchNorm2d(h),
                nn.ReLU6(),
                nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False),
                nn.BatchNorm2d(h),
                nn.ReLU6(),
                nn.Conv2d(h, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

        def forward(self, x):
            return x + self.body(x) if self.use_res else self.body(x)

    class TinyMobileNetV2(nn.Module):
        residuals, shortcuts = 3, 0

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
            )
            self.blocks = nn.Sequential(
                Inverted(8, 8, 1, 2),
                Inverted(8, 16, 2, 3),
                Inverted(16, 16, 1, 3),
                Inverted(16, 16, 1, 3),
            )
            self.head = nn.Conv2d(16, 10, 1)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    return torch, {"resnet": TinyResNet, "mobilenet_v2": TinyMobileNetV2}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("arch", ["resnet", "mobilenet_v2"])
def test_torch_export(arch, exporter, tmp_path):
    torch, nets = _torch_nets()
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = init_batchnorm(torch, nets[arch]())
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / f"{arch}.onnx"
    if exporter == "torchscript":
        torch.onnx.export(
            net,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
        )
    else:
        program = torch.onnx.export(net, (x,), dynamo=True)
        program.save(str(path), external_data=True)
        assert (tmp_path / f"{arch}.onnx.data").is_file()  # the weights sit beside it
    report = api.inspect(path)
    res = residuals(report)
    assert len(res) == net.residuals
    assert sum(r["shortcut"] is not None for r in res) == net.shortcuts
    assert report["unmatched"] == []
    acts = {p["activation"] for c in report["chains"] for p in c["positions"]}
    assert acts - {None} == ({"relu"} if arch == "resnet" else {"relu6"})
    fused, fr = api.fuse(path, tmp_path / "fused.onnx")
    assert fr.max_rel <= 1e-5
    model = onnx.load(str(path))
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort_outputs(
        onnx.load(str(tmp_path / "fused.onnx")), {model.graph.input[0].name: x.numpy()}
    )[0]
    assert np.max(np.abs(ref - got)) / np.max(np.abs(ref)) <= 1e-4


def test_external_data_path_is_read(tmp_path):
    """Loading through a path reads the external weights (not zeros) - cross-check via ORT."""
    model = zoo_model("vgg")
    path = tmp_path / "vgg.onnx"
    save_external(model, path)
    fused, _ = api.fuse(Path(path))
    assert rel_error(model, fused) <= 1e-5
