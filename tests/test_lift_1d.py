"""passes.lift_1d: 1-D conv runs lifted to 2-D convs of height 1, the Squeeze/Unsqueeze pairs
between them dropped, so that depth compression merges them (torch's Conv1d, and tf2onnx's
Keras Conv1D, which it writes as Unsqueeze -> 2-D Conv -> Squeeze)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from graphs import infer_output_shapes
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import api
from onnxmerge.analysis import analyze
from onnxmerge.graph.export import export
from onnxmerge.runtime import session

F = TensorProto.FLOAT
ACTS = ["Relu", "Sigmoid", "LeakyRelu", "Clip", "PRelu", "Swish"]


def net_1d(layers, style: str, opset: int, seed: int, length: int = 20) -> onnx.ModelProto:
    """A run of 1-D convs (each (k, stride, dilation, group, act, affine)) over N x 4 x L:
    `style` "conv1d" writes Conv nodes with 3-D weights (torch), "sandwich" writes each as
    Unsqueeze -> 2-D Conv -> Squeeze (tf2onnx's Keras Conv1D). Between convs: a per-channel
    Mul/Add (a BatchNorm tf2onnx did not fold, constants of shape (C, 1)) and an activation."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "x", 4
    idx = 0

    def init(value, name):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def unit(op, inp, out):
        nonlocal idx
        idx += 1
        if opset >= 13:
            axes = f"axes{idx}"
            inits.append(numpy_helper.from_array(np.array([2], np.int64), axes))
            return helper.make_node(op, [inp, axes], [out], name=f"{op}{idx}")
        return helper.make_node(op, [inp], [out], name=f"{op}{idx}", axes=[2])

    for i, (k, s, d, g, act, affine) in enumerate(layers):
        o = 4 * g
        w = rng.standard_normal((o, c // g, k)) / np.sqrt(c * k)
        p = d * (k - 1) // 2
        attrs = {"strides": [s], "dilations": [d], "pads": [p, p], "group": g}
        b = init(rng.standard_normal(o) * 0.1, f"b{i}")
        if style == "conv1d":
            nodes.append(helper.make_node("Conv", [x, init(w, f"w{i}"), b], [f"c{i}"],
                                          name=f"conv{i}", **attrs))  # fmt: skip
        else:
            lifted = {"strides": [1, s], "dilations": [1, d], "pads": [0, p, 0, p], "group": g}
            nodes.append(unit("Unsqueeze", x, f"u{i}"))
            nodes.append(helper.make_node("Conv", [f"u{i}", init(w[:, :, None], f"w{i}"), b],
                                          [f"c4_{i}"], name=f"conv{i}", **lifted))  # fmt: skip
            nodes.append(unit("Squeeze", f"c4_{i}", f"c{i}"))
        x, c = f"c{i}", o
        if affine:
            m = init(rng.uniform(0.5, 1.5, (c, 1)), f"m{i}")
            a = init(rng.standard_normal((c, 1)) * 0.1, f"a{i}")
            nodes.append(helper.make_node("Mul", [x, m], [f"bm{i}"], name=f"mul{i}"))
            nodes.append(helper.make_node("Add", [f"bm{i}", a], [f"ba{i}"], name=f"add{i}"))
            x = f"ba{i}"
        y = f"act{i}"
        if act == "Clip":
            lo, hi = init(0.0, f"lo{i}"), init(6.0, f"hi{i}")
            nodes.append(helper.make_node("Clip", [x, lo, hi], [y], name=f"clip{i}"))
        elif act == "PRelu":
            slope = init(rng.uniform(0, 0.3, (c, 1)), f"slope{i}")
            nodes.append(helper.make_node("PRelu", [x, slope], [y], name=f"prelu{i}"))
        elif act == "Swish":  # two variable inputs, both squeezed
            nodes.append(helper.make_node("Sigmoid", [x], [f"sg{i}"], name=f"sig{i}"))
            nodes.append(helper.make_node("Mul", [x, f"sg{i}"], [y], name=f"swish{i}"))
        else:
            nodes.append(helper.make_node(act, [x], [y], name=f"{act.lower()}{i}"))
        x = y
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, [1, 4, length])],
        [helper.make_tensor_value_info(x, F, None)], inits,
    )  # fmt: skip
    return infer_output_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    )


layer = st.tuples(
    st.sampled_from([1, 3, 5]),  # kernel
    st.sampled_from([1, 1, 2]),  # stride
    st.sampled_from([1, 1, 2]),  # dilation
    st.sampled_from([1, 1, 2]),  # groups
    st.sampled_from(ACTS),
    st.booleans(),  # an unfolded per-channel affine
)


@settings(max_examples=25, deadline=None)
@given(
    layers=st.lists(layer, min_size=2, max_size=4),
    style=st.sampled_from(["conv1d", "sandwich"]),
    opset=st.sampled_from([11, 13, 17]),
    seed=st.integers(0, 100),
)
def test_lifted_graph_computes_the_same_and_joins_the_run(layers, style, opset, seed):
    """Against ONNX Runtime on the unlifted model: the same output (rel 1e-5); every conv is
    2-D in one chain; only the run's two ends keep an Unsqueeze and a Squeeze."""
    model = net_1d(layers, style, opset, seed)
    analysis = analyze(model, lift=True)
    out = export(analysis.graph.copy(), analysis.model, interface=analysis.source)
    x = np.random.default_rng(seed).standard_normal((1, 4, 20)).astype(np.float32)
    name = model.graph.output[0].name
    want = session(model).run([name], {"x": x})[0]
    got = session(out).run([name], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Unsqueeze") == 1 and ops.count("Squeeze") == 1
    (chain,) = analysis.match.chains
    assert len(chain.slots) == len(layers)
    plain = analyze(model)  # without lift: the convs stay 1-D, in no chain
    assert not any(len(ch.slots) > 1 for ch in plain.match.chains)


def test_a_squeeze_into_another_op_or_a_graph_output_stays():
    """A squeezed tensor read by an op that is not elementwise (a Flatten) keeps its Squeeze;
    a graph output keeps its name and shape."""
    model = net_1d([(3, 1, 1, 1, "Relu", False)] * 2, "sandwich", 17, 0)
    g = gs.import_onnx(model)
    out = g.outputs[0]
    flat = gs.Variable("flat", np.float32)
    g.nodes.append(gs.Node("Flatten", "flatten", inputs=[out], outputs=[flat]))
    g.outputs = [out, flat]
    model = gs.export_onnx(g)
    lifted = export(analyze(model, lift=True).graph.copy(), model)
    x = np.random.default_rng(0).standard_normal((1, 4, 20)).astype(np.float32)
    names = [o.name for o in model.graph.output]
    for a, b in zip(session(model).run(names, {"x": x}), session(lifted).run(names, {"x": x}),
                    strict=True):  # fmt: skip
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("style", ["conv1d", "sandwich"])
def test_depth_compression_merges_a_1d_network(tmp_path, macs_backend, style):
    """compress --prune depth merges 1-D convs (it found none before); --from-plan rebuilds
    the same network; without the refit, `fuse --plan` of its fine-tune graph is it."""
    model = net_1d([(3, 1, 1, 1, "Relu", True)] * 4, style, 17, 1, length=64)
    common = {"backend": macs_backend, "progress": False, "cache_dir": tmp_path}
    res = api.compress(model, 1.5, kind="depth", calib_count=4, **common)
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert len(convs) < 4
    again = api.from_plan(model, res.plan, calib_count=4, backend=macs_backend)
    x = np.random.default_rng(2).standard_normal((1, 4, 64)).astype(np.float32)
    name = model.graph.output[0].name
    np.testing.assert_allclose(
        session(again.model).run([name], {"x": x})[0],
        session(res.model).run([name], {"x": x})[0], rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    plain = api.compress(model, 1.5, kind="depth", calib_count=4, calibrate=False, **common)
    fused, _ = api.fuse(plain.finetune_graph(), plan=plain.plan)
    assert len([n for n in fused.graph.node if n.op_type == "Conv"]) == len(
        [n for n in plain.model.graph.node if n.op_type == "Conv"])  # fmt: skip
    want = session(plain.model).run([name], {"x": x})[0]
    got = session(fused).run([name], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
