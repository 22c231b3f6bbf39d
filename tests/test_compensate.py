"""Mean replacement (calibration.compensate): what a consumer loses with its pruned inputs goes
into its bias. Checked against ONNX Runtime on the unpruned graph: where the removed channels
are constant (their producer rows zeroed, their biases kept), pruning plus compensation
computes the original function exactly, and pruning alone does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import G, run
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge.analysis import analyze
from onnxmerge.calibration.capture import capture
from onnxmerge.calibration.compensate import Lost, compensate
from onnxmerge.calibration.network import refit_merged
from onnxmerge.kinds.width.groups import channel_groups
from onnxmerge.kinds.width.kind import WidthCandidate, WidthKind


def _network(seed: int, c: int, k: int, stride: int, head: str, trans_b: int, alpha: float,
             beta: float, c_bias: bool, removed: list[int], names: bool = True,
             dense: str = "gemm") -> onnx.ModelProto:  # fmt: skip
    """x -> Conv (1x1, c channels) -> Relu -> t; t -> Conv (k x k, no padding) -> y;
    t -> GlobalAveragePool or nothing -> Flatten -> Gemm (or MatMul, Add) -> z. The `removed`
    channels of t are constant: their producer rows are zero and their biases positive."""
    b = G(seed, names=names)
    t = b.node("Relu", [b.conv(b.input("x", [1, 3, 9, 9]), 3, c, 1, name="producer")])
    w = next(i for i in b.inits if i.name == b.nodes[0].input[1])
    bias = next(i for i in b.inits if i.name == b.nodes[0].input[2])
    wv, bv = onnx.numpy_helper.to_array(w).copy(), onnx.numpy_helper.to_array(bias).copy()
    wv[removed] = 0
    bv[removed] = b.rng.uniform(0.5, 2.0, len(removed))
    w.CopyFrom(onnx.numpy_helper.from_array(wv, w.name))
    bias.CopyFrom(onnx.numpy_helper.from_array(bv, bias.name))
    y = b.conv(t, c, 5, k, name="consumer", strides=[stride] * 2, out="y")
    f = b.node("Flatten", [b.node("GlobalAveragePool", [t]) if head == "gap" else t], axis=1)
    features = c if head == "gap" else c * 81
    if dense == "matmul":  # tf2onnx's dense layer: MatMul, then Add of the bias
        m = b.node("MatMul", [f, b.const(b.rng.standard_normal((features, 7)) * 0.1)])
        z = b.node("Add", [m, b.const(b.rng.standard_normal(7))], name="head", out="z")
        return b.model([(y, None), (z, None)])
    shape = (7, features) if trans_b else (features, 7)
    ins = [f, b.const(b.rng.standard_normal(shape) * 0.1)]
    if c_bias:
        ins.append(b.const(b.rng.standard_normal(7)))
    z = b.node("Gemm", ins, name="head", out="z", transB=trans_b, alpha=alpha, beta=beta)
    return b.model([(y, None), (z, None)])


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    c=st.integers(3, 10),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    head=st.sampled_from(["gap", "flatten"]),
    trans_b=st.integers(0, 1),
    alpha=st.floats(0.25, 2.0),
    beta=st.floats(0.5, 2.0),
    c_bias=st.booleans(),
    dense=st.sampled_from(["gemm", "matmul"]),
    data=st.data(),
)
def test_compensation_is_exact_for_constant_channels(
    seed, c, k, stride, head, trans_b, alpha, beta, c_bias, dense, data
):
    removed = data.draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c - 1, unique=True))
    model = _network(seed, c, k, stride, head, trans_b, alpha, beta, c_bias, removed, True, dense)
    a = analyze(model)
    (group,) = [g for g in channel_groups(a.graph) if g.prunable]
    kept = tuple(sorted(set(range(c)) - set(removed)))
    cut = WidthCandidate(group.id, len(kept), c, kept)
    pruned, refits = a.rewrite(lambda g, m, names: WidthKind().apply(g, m, [cut], "merged", names))
    lost = {r.node.name: r.lost for r in refits}
    assert set(lost) == {"consumer", "head"}
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)} for _ in range(3)]
    tensors = capture(a.reference, feeds, [v.tensor for v in lost.values()])
    fixed = onnx.ModelProto()
    fixed.CopyFrom(pruned)
    assert sorted(compensate(fixed, lost, tensors)) == ["consumer", "head"]
    onnx.checker.check_model(fixed)
    feed = {"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)}
    ref, got, plain = run(model, feed), run(fixed, feed), run(pruned, feed)
    for name in ("y", "z"):
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(got[name], ref[name], atol=1e-5 * scale, rtol=1e-5)
    # pruning alone drops the constants' contribution
    assert max(np.abs(plain[n] - ref[n]).max() / np.abs(ref[n]).max() for n in "yz") > 1e-3
    # the old biases nothing reads any more are gone
    used = {i for n in fixed.graph.node for i in n.input}
    assert all(t.name in used for t in fixed.graph.initializer)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    group=st.integers(2, 4),
    per=st.integers(2, 4),
    k=st.sampled_from([1, 3]),
    data=st.data(),
)
def test_compensation_is_exact_for_a_grouped_consumer(seed, group, per, k, data):
    """A grouped conv that loses as many constant channels from each conv group computes the
    original exactly once their means are in its bias (each output row only from its own
    conv group's inputs)."""
    c = group * per
    drop = data.draw(st.integers(1, per - 1))
    rng = np.random.default_rng(seed)
    removed = sorted(int(j * per + i) for j in range(group) for i in rng.permutation(per)[:drop])
    b = G(seed)
    t = b.node("Relu", [b.conv(b.input("x", [1, 3, 9, 9]), 3, c, 1, name="producer")])
    w, bias = (next(i for i in b.inits if i.name == b.nodes[0].input[j]) for j in (1, 2))
    wv, bv = onnx.numpy_helper.to_array(w).copy(), onnx.numpy_helper.to_array(bias).copy()
    wv[removed], bv[removed] = 0, rng.uniform(0.5, 2.0, len(removed))
    w.CopyFrom(onnx.numpy_helper.from_array(wv, w.name))
    bias.CopyFrom(onnx.numpy_helper.from_array(bv, bias.name))
    y = b.conv(t, c, 2 * group, k, name="consumer", group=group, out="y")
    model = b.model([(y, None)])
    a = analyze(model)
    (g,) = [g for g in channel_groups(a.graph) if g.prunable]
    assert g.blocks == group
    kept = tuple(sorted(set(range(c)) - set(removed)))
    cut = WidthCandidate(g.id, len(kept), c, kept)
    pruned, refits = a.rewrite(
        lambda gr, m, names: WidthKind().apply(gr, m, [cut], "merged", names)
    )
    lost = {r.node.name: r.lost for r in refits}
    feeds = [{"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)} for _ in range(2)]
    fixed = onnx.ModelProto()
    fixed.CopyFrom(pruned)
    assert compensate(fixed, lost, capture(a.reference, feeds, [lost["consumer"].tensor]))
    feed = {"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)}
    ref, got, plain = run(model, feed)["y"], run(fixed, feed)["y"], run(pruned, feed)["y"]
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max(), rtol=1e-5)
    assert np.abs(plain - ref).max() > 1e-3 * np.abs(ref).max()


def test_shift_is_the_mean_of_the_removed_features_times_their_weight():
    """Lost.shift against float64 numpy: the mean over every axis but 1."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 5, 3))
    lost = Lost("t", np.array([1, 4]), rng.standard_normal((3, 2)))
    expected = lost.weight @ x[:, [1, 4]].mean(axis=(0, 2, 3))
    np.testing.assert_allclose(lost.shift(x), expected)


@pytest.mark.parametrize("names", [True, False])
def test_refit_starts_from_the_compensated_bias(names):
    """refit_merged with `lost`: the Gemm head (not refit) gets the shift, and the consumer
    conv is refit from the compensated prior; the result matches the original. With nodes
    the exporter left unnamed (names=False), analysis names them, so calibration finds
    each conv by its own name."""
    removed = [0, 2]
    model = _network(3, 6, 1, 1, "gap", 1, 1.0, 1.0, True, removed, names)
    a = analyze(model)
    graph_names = [n.name for n in a.graph.nodes]
    assert all(graph_names) and len(set(graph_names)) == len(graph_names)
    (group,) = [g for g in channel_groups(a.graph) if g.prunable]
    cut = WidthCandidate(group.id, 4, 6, (1, 3, 4, 5))
    pruned, refits = a.rewrite(lambda g, m, names: WidthKind().apply(g, m, [cut], "merged", names))
    lost = {r.node.name: r.lost for r in refits}
    assert len(lost) == 2
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)} for _ in range(8)]
    kept = {r.node.name: r.kept_out for r in refits}
    out, fits = refit_merged(a.reference, pruned, kept, feeds, lost=lost)
    assert len(fits) == 1 and fits[0].fitted and fits[0].error_after < 1e-6
    for feed in feeds[:2]:
        ref, got = run(model, feed), run(out, feed)
        for name in ("y", "z"):
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    c=st.integers(3, 8),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    data=st.data(),
)
def test_a_conv_transpose_consumer_keeps_the_mean_of_what_it_lost(seed, c, k, stride, pad, data):
    """A ConvTranspose (a UNet's upsampling) that loses constant channels: with their means in
    its bias its output's mean over every period of output positions (stride x stride) is the
    original's, where pruning alone shifts it; at stride 1, away from the borders, it is
    exact (one phase)."""
    pad = min(pad, k - 1)
    removed = data.draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c - 1, unique=True))
    b = G(seed)
    t = b.node("Relu", [b.conv(b.input("x", [1, 3, 6, 6]), 3, c, 1, name="producer")])
    w, bias = (next(i for i in b.inits if i.name == b.nodes[0].input[j]) for j in (1, 2))
    wv, bv = onnx.numpy_helper.to_array(w).copy(), onnx.numpy_helper.to_array(bias).copy()
    wv[removed], bv[removed] = 0, b.rng.uniform(0.5, 2.0, len(removed))
    w.CopyFrom(onnx.numpy_helper.from_array(wv, w.name))
    bias.CopyFrom(onnx.numpy_helper.from_array(bv, bias.name))
    weight = b.const(b.rng.standard_normal((c, 4, k, k)) * 0.3)
    y = b.node("ConvTranspose", [t, weight, b.const(b.rng.standard_normal(4))], name="consumer",
               out="y", kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4)  # fmt: skip
    model = b.model([(y, None)])
    a = analyze(model)
    (g,) = [g for g in channel_groups(a.graph) if g.prunable]
    kept = tuple(sorted(set(range(c)) - set(removed)))
    cut = WidthCandidate(g.id, len(kept), c, kept)
    pruned, refits = a.rewrite(
        lambda gr, m, names: WidthKind().apply(gr, m, [cut], "merged", names)
    )
    lost = {r.node.name: r.lost for r in refits if r.lost is not None}
    assert set(lost) == {"consumer"}
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(2)]
    fixed = onnx.ModelProto()
    fixed.CopyFrom(pruned)
    assert compensate(fixed, lost, capture(a.reference, feeds, [lost["consumer"].tensor]))
    onnx.checker.check_model(fixed)
    feed = {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    ref, got, plain = run(model, feed)["y"], run(fixed, feed)["y"], run(pruned, feed)["y"]
    # the interior: output rows every input row's kernel reaches fully, whole periods of them
    lo = k - 1 - pad + stride - 1
    n = (ref.shape[2] - 2 * lo) // stride * stride
    if n < stride:
        return
    inner = (slice(None), slice(None), slice(lo, lo + n), slice(lo, lo + n))
    # the mean over whole periods of positions, per channel: what the removed constants added
    mean = lambda v: v[inner].mean(axis=(0, 2, 3))  # noqa: E731
    scale = np.abs(ref).max()
    np.testing.assert_allclose(mean(got), mean(ref), atol=1e-5 * scale)
    assert np.abs(mean(plain) - mean(ref)).max() > 1e-4 * scale
    if stride == 1:
        np.testing.assert_allclose(got[inner], ref[inner], atol=1e-5 * scale)
