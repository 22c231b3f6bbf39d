"""A ConvTranspose as the stride-1 conv it equals on its zero-inserted input (conv_transpose),
checked against ONNX Runtime's ConvTranspose over random geometries, and the least-squares
refit that uses it (calibration.network.refit_merged)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import G, run
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxmerge.calibration.fit import fit_conv
from onnxmerge.calibration.network import refit_merged
from onnxmerge.conv_transpose import as_conv, transposed, zero_insert
from onnxmerge.graph.conv import read_transpose_proto


def _transpose_model(w, b, stride, pads, output_padding, hw) -> onnx.ModelProto:
    c_in, c_out = w.shape[:2]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up",
                            kernel_shape=list(w.shape[2:]), strides=list(stride),
                            pads=list(pads), output_padding=list(output_padding))  # fmt: skip
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", 1, [1, c_in, *hw])],
        [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(b.astype(np.float32), "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_model(lin, hw) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(lin.kernel),
                            pads=list(lin.pads))  # fmt: skip
    graph = helper.make_graph(
        [node], "c", [helper.make_tensor_value_info("x", 1, [1, lin.in_channels, *hw])],
        [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(lin.weight.astype(np.float32), "w"),
         numpy_helper.from_array(lin.bias.astype(np.float32), "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


geometries = st.fixed_dictionaries({
    "c": st.tuples(st.integers(1, 5), st.integers(1, 5)),
    "k": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "s": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "hw": st.tuples(st.integers(1, 6), st.integers(1, 6)),
    "seed": st.integers(0, 2**16),
    "data": st.data(),
})  # fmt: skip


def _draw(g):
    (kh, kw), (sh, sw) = g["k"], g["s"]
    pads = tuple(g["data"].draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw))
    op = tuple(g["data"].draw(st.integers(0, s - 1)) for s in (sh, sw))
    for size, k, s, before, after, extra in zip(g["hw"], (kh, kw), (sh, sw), pads[:2], pads[2:],
                                                op, strict=True):  # fmt: skip
        assume((size - 1) * s + k - before - after + extra >= 1)  # a non-empty output
    rng = np.random.default_rng(g["seed"])
    w = rng.standard_normal((*g["c"], kh, kw))
    return rng, w, rng.standard_normal(g["c"][1]), pads, op


@settings(max_examples=40, deadline=None)
@given(g=geometries)
def test_a_conv_transpose_is_a_conv_on_its_zero_inserted_input(g):
    rng, w, b, pads, op = _draw(g)
    model = _transpose_model(w, b, g["s"], pads, op, g["hw"])
    x = rng.standard_normal((1, g["c"][0], *g["hw"])).astype(np.float32)
    ref = run(model, {"x": x})["y"]
    lin = as_conv(w, b, pads, op)
    up = zero_insert(x, g["s"])
    got = run(_conv_model(lin, up.shape[2:]), {"x": up})["y"]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(transposed(lin.weight), w)  # its own inverse
    inits = {t.name: t for t in model.graph.initializer}
    read, stride = read_transpose_proto(model.graph.node[0], inits)
    assert stride == g["s"] and read.pads == lin.pads
    np.testing.assert_allclose(read.weight, lin.weight, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(g=geometries)
def test_the_refit_recovers_a_conv_transpose_from_its_outputs(g):
    """Fitting the equivalent conv on the zero-inserted inputs toward another ConvTranspose's
    outputs (same geometry), then transposing back, gives that ConvTranspose's function."""
    rng, w, b, pads, op = _draw(g)
    target_w, target_b = rng.standard_normal(w.shape), rng.standard_normal(b.shape)
    target = _transpose_model(target_w, target_b, g["s"], pads, op, g["hw"])
    x = rng.standard_normal((12, g["c"][0], *g["hw"])).astype(np.float32)
    y = np.concatenate([run(target, {"x": v[None]})["y"] for v in x])
    fit = fit_conv(as_conv(w, b, pads, op), zero_insert(x, g["s"]), y, ridge=1e-9)
    if fit.conv is None:  # too few output pixels for its unknowns
        assert "pixels" in fit.reason
        return
    # the same function on fresh inputs (taps a crop never shows are not determined)
    refit = _transpose_model(transposed(fit.conv.weight), fit.conv.bias, g["s"], pads, op, g["hw"])
    x = rng.standard_normal((1, g["c"][0], *g["hw"])).astype(np.float32)
    ref, got = run(target, {"x": x})["y"], run(refit, {"x": x})["y"]
    np.testing.assert_allclose(got, ref, atol=1e-3 * max(1.0, np.abs(ref).max()))


def test_refit_merged_refits_a_conv_transpose_in_place() -> None:
    """refit_merged on a network whose ConvTranspose drifted: refit toward the original's
    tensor of the same name, written back as a ConvTranspose (same attributes), error falls."""
    b = G(0)
    t = b.node("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 6, 3, name="c1")])
    up = b.node("ConvTranspose", [t, b.const(b.rng.standard_normal((6, 4, 2, 2))),
                                  b.const(b.rng.standard_normal(4))],
                name="up", out="y", kernel_shape=[2, 2], strides=[2, 2])  # fmt: skip
    original = b.model([(up, None)])
    drifted = onnx.ModelProto()
    drifted.CopyFrom(original)
    node = next(n for n in drifted.graph.node if n.op_type == "ConvTranspose")
    w = next(i for i in drifted.graph.initializer if i.name == node.input[1])
    noisy = numpy_helper.to_array(w) + 0.5 * b.rng.standard_normal(tuple(w.dims))
    w.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), w.name))
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(6)]
    fixed, (report,) = refit_merged(original, drifted, {"up"}, feeds, {"ridge": 1e-6})
    assert report.fitted and report.error_after < 1e-3 * report.error_before
    assert [n.op_type for n in fixed.graph.node] == [n.op_type for n in original.graph.node]
    feed = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ref, got = run(original, feed)["y"], run(fixed, feed)["y"]
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("attrs", [{"group": 2}, {"dilations": [2, 2]}, {"pads": [2] * 4}])
def test_conv_transposes_the_refit_cannot_take_are_left_as_they_are(attrs) -> None:
    w = np.ones((4, 2, 2, 2), np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[2, 2],
                            **attrs)  # fmt: skip
    b = np.zeros(2 * attrs.get("group", 1), np.float32)
    inits = {"w": numpy_helper.from_array(w, "w"), "b": numpy_helper.from_array(b, "b")}
    assert read_transpose_proto(node, inits) is None
