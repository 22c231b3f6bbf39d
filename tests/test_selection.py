"""Channel selection by greedy structured OBS (kinds/width/selection.py, consumers.py).

The order against a brute-force greedy that refits from scratch (the Schur complement of the
Hessian, not OBS's inverse-Hessian updates) on random consumers; the statistics gathered from
a real graph (a Concat offset, 3x3 taps, a Gemm head) against least squares on the captured
tensors; and on a network with a duplicated channel, OBS keeps the unique channel that the
norm order drops, with a lower error after the refit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.analysis import analyze
from onnxmerge.calibration.capture import capture
from onnxmerge.errors import OnnxMergeError
from onnxmerge.kinds.width.consumers import channel_orders
from onnxmerge.kinds.width.groups import channel_groups
from onnxmerge.kinds.width.scores import channel_norms, strongest
from onnxmerge.kinds.width.selection import Consumer, kept, obs_order


def _refit_error(weight, hessian, gone_columns) -> float:
    """min over the other columns of tr(D H D^T), D = W' - W, W' zero on `gone_columns`."""
    k = hessian.shape[0]
    b = np.asarray(sorted(gone_columns))
    r = np.setdiff1d(np.arange(k), b)
    d = np.zeros_like(weight)
    d[:, b] = -weight[:, b]
    d[:, r] = weight[:, b] @ hessian[np.ix_(b, r)] @ np.linalg.inv(hessian[np.ix_(r, r)])
    return float(np.trace(d @ hessian @ d.T))


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(2, 6),
    taps=st.integers(1, 3),
    extra=st.integers(0, 3),
    consumers=st.integers(1, 3),
    static=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_obs_order_is_the_greedy_of_exact_refits(channels, taps, extra, consumers, static, seed):
    """Each removal is the channel whose loss (with everything removed so far, the others
    refit by least squares) is least, summed over consumers: OBS's updates are exact."""
    rng = np.random.default_rng(seed)
    ridge = 1e-3
    cons, hessians = [], []
    for _ in range(consumers):
        k = channels * taps + extra + 1
        x = rng.standard_normal((3 * k, k)) @ rng.standard_normal((k, k))
        x[:, -1] = 1.0
        gram = x.T @ x
        weight = rng.standard_normal((rng.integers(1, 4), k))
        cols = rng.permutation(k - 1)[: channels * taps].reshape(channels, taps)
        cons.append(Consumer(weight, cols, gram=gram))
        hessians.append(gram + ridge * np.trace(gram) / k * np.eye(k))
    fixed = np.zeros(channels)
    if static:  # a consumer not refit: a constant cost per channel
        blocks = np.stack([np.eye(taps) * (j + 1) for j in range(channels)])
        w = rng.standard_normal((2, channels * taps))
        cons.append(Consumer(w, np.arange(channels * taps).reshape(channels, taps), blocks=blocks))
        per_channel = (w.reshape(2, channels, taps) ** 2).sum((0, 2))
        fixed = per_channel * np.arange(1, channels + 1)
    order = obs_order(cons, channels, ridge=ridge)
    assert sorted(order) == list(range(channels))
    removed: list[int] = []
    for got in order[:-1]:
        alive = [j for j in range(channels) if j not in removed]
        cost = {
            j: fixed[j]
            + sum(
                _refit_error(c.weight, h, c.columns[removed + [j]].reshape(-1))
                for c, h in zip(cons[:consumers], hessians, strict=True)
            )
            for j in alive
        }
        best = min(cost.values())
        assert cost[got] <= best * (1 + 1e-6) + 1e-9, (got, cost)
        removed.append(got)


def test_obs_order_checks_shapes_and_steps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    c = Consumer(rng.standard_normal((2, 5)), np.arange(4).reshape(4, 1), gram=x.T @ x)
    assert sorted(obs_order([c], 4, step=3)) == [0, 1, 2, 3]
    assert kept([3, 0, 2, 1], 2) == (1, 2) and kept([3, 0, 2, 1], 0) == ()
    with pytest.raises(ValueError, match="do not match"):
        obs_order([Consumer(np.zeros((2, 4)), np.arange(4).reshape(4, 1), gram=x.T @ x)], 4)


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 5), size=st.integers(1, 6), data=st.data(), seed=st.integers(0, 999))
def test_kept_in_blocks_follows_the_order_within_each_block(blocks, size, data, seed):
    """Each block keeps width / blocks channels: the ones the order removes last among its
    own (and with one block, the order's last `width`)."""
    n = blocks * size
    order = [int(j) for j in np.random.default_rng(seed).permutation(n)]
    width = blocks * data.draw(st.integers(0, size))
    keep = kept(order, width, blocks)
    assert list(keep) == sorted(keep) and len(keep) == width
    for j in range(blocks):
        own = [c for c in order if c // size == j]
        assert [c for c in keep if c // size == j] == sorted(own[size - width // blocks :])
    norms = np.random.default_rng(seed).random(n)
    assert strongest(norms, width, blocks) == kept(list(np.argsort(norms)), width, blocks)
    if blocks > 1:
        with pytest.raises(ValueError, match="do not split"):
            kept(order, width + 1, blocks)


def _model(duplicate: bool = False) -> onnx.ModelProto:
    """x (1,3,8,8) -> A: 1x1 conv 4 -> Relu; B: 1x1 conv 4 -> Relu; Concat(A, B) -> C: 3x3
    conv 5 (pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 3. With `duplicate`, B's
    channels 0 and 1 are one channel (large, the same row) and channel 2 is small but unique."""
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((4, 3, 1, 1))
    wb = rng.standard_normal((4, 3, 1, 1))
    if duplicate:
        wb[1] = wb[0] = 3 * np.abs(rng.standard_normal((3, 1, 1)))
        wb[2] = 0.3 * rng.standard_normal((3, 1, 1))
        wb[3] = 0.5 * rng.standard_normal((3, 1, 1))
    bb = np.abs(rng.standard_normal(4))
    bb[1] = bb[0]
    inits = {
        "wa": wa,
        "wb": wb,
        "ba": rng.standard_normal(4) * 0.1,
        "bb": bb,
        "wc": rng.standard_normal((5, 8, 3, 3)),
        "bc": rng.standard_normal(5) * 0.1,
        "wg": rng.standard_normal((3, 5)),
        "bg": rng.standard_normal(3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a0"], name="A"),
        helper.make_node("Relu", ["a0"], ["a"], name="ra"),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b0"], name="B"),
        helper.make_node("Relu", ["b0"], ["b"], name="rb"),
        helper.make_node("Concat", ["a", "b"], ["ab"], name="cat", axis=1),
        helper.make_node("Conv", ["ab", "wc", "bc"], ["c0"], name="C", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["c"], name="rc"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="G", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _setup(duplicate: bool = False):
    analysis = analyze(_model(duplicate))
    groups = {g.members[0].tensor: g for g in channel_groups(analysis.graph, 1) if g.prunable}
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(6)]
    return analysis, groups, feeds


def _patches(x: np.ndarray) -> np.ndarray:
    """(images*64, 8*9 + 1) im2col of (N, 8, 8, 8) for a 3x3 pad-1 conv, channel-major, + 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = [xp[:, :, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
    p = np.stack(cols, 2).transpose(0, 3, 4, 1, 2).reshape(-1, 72)  # (N*64, C*9)
    return np.concatenate([p, np.ones((len(p), 1))], 1)


def _miss(analysis, feeds, gone: list[int]) -> float:
    """Squared error of C's output after dropping B's channels `gone` from its input and
    refitting C by least squares on the captured input."""
    x = np.asarray(capture(analysis.reference, feeds, ["ab"])["ab"], np.float64)
    p = _patches(x)
    wc = next(t for t in analysis.reference.graph.initializer if list(t.dims) == [5, 8, 3, 3])
    y = p[:, :72] @ numpy_helper.to_array(wc).reshape(5, 72).T
    keep = [c for c in range(73) if not any(36 + 9 * j <= c < 45 + 9 * j for j in gone)]
    theta, *_ = np.linalg.lstsq(p[:, keep], y, rcond=None)
    return float(((p[:, keep] @ theta - y) ** 2).sum())


def _group(groups: dict, producer: str):
    return next(g for g in groups.values() if g.producers[0][0] == producer)


def test_orders_from_the_graph_follow_least_squares_on_captured_tensors():
    """Group B sits at offset 4 of C's input (9 taps per channel): its first removal is the
    channel whose columns least squares on the captured input misses least. The group of C's
    output feeds a Gemm head (not refit): it is ordered too."""
    analysis, groups, feeds = _setup()
    orders = channel_orders(analysis.graph, analysis.reference, list(groups.values()), feeds,
                            ridge=1e-9)  # fmt: skip
    b = _group(groups, "B")
    errors = [_miss(analysis, feeds, [j]) for j in range(4)]
    assert orders[b.id][0] == int(np.argmin(errors)), (orders, errors)
    assert {len(o) for o in orders.values()} == {4, 5} and len(orders) == 3
    assert all(sorted(o) == list(range(len(o))) for o in orders.values())


def test_a_consumer_with_too_few_pixels_to_refit_orders_by_what_it_loses():
    """One 8x8 image gives C 64 pixels for 73 unknowns: calibration will not refit it
    (fit.why_not), so a channel costs what its centred columns contribute to C's output."""
    analysis, groups, feeds = _setup()
    b = _group(groups, "B")
    order = channel_orders(analysis.graph, analysis.reference, [b], feeds[:1])[b.id]
    x = np.asarray(capture(analysis.reference, feeds[:1], ["ab"])["ab"], np.float64)
    p = _patches(x)[:, :72]
    p -= p.mean(0)
    wc = next(t for t in analysis.reference.graph.initializer if list(t.dims) == [5, 8, 3, 3])
    w = numpy_helper.to_array(wc).reshape(5, 72)
    lost = [((p[:, 36 + 9 * j : 45 + 9 * j] @ w[:, 36 + 9 * j : 45 + 9 * j].T) ** 2).sum()
            for j in range(4)]  # fmt: skip
    assert order == [int(j) for j in np.argsort(lost)], (order, lost)


def test_obs_keeps_the_unique_channel_that_norms_drop():
    """B's channels 0 and 1 are copies (the largest norms): norm keeps both at width 2, OBS
    keeps one copy and a channel nothing else carries, and the refit consumer misses less."""
    analysis, groups, feeds = _setup(duplicate=True)
    g = _group(groups, "B")
    norm = strongest(channel_norms(analysis.graph, g), 2)
    obs = kept(channel_orders(analysis.graph, analysis.reference, [g], feeds)[g.id], 2)
    assert norm == (0, 1)
    assert len({0, 1} & set(obs)) == 1
    gone = [j for j in range(4) if j not in obs]
    assert _miss(analysis, feeds, gone) < 0.5 * _miss(analysis, feeds, [2, 3])


def test_compress_keeps_the_obs_channels_and_reuses_the_orders(tmp_path, monkeypatch, macs_backend):
    """The plan keeps, per cut group, the last `width` channels of its OBS order (the orders
    computed once: a second run reads them from the cache); with "norm", the largest norms."""
    from onnxmerge import zoo
    from onnxmerge.compress import compress
    from onnxmerge.kinds.width import consumers

    computed: list[dict] = []
    real = consumers.channel_orders

    def spy(*args, **kwargs):
        computed.append(real(*args, **kwargs))
        return computed[-1]

    monkeypatch.setattr(consumers, "channel_orders", spy)
    model = zoo.resnet(18, width=0.25, size=32)
    run = {"kind": "width", "width_align": 4, "calib_count": 8, "progress": False,
           "cache_dir": tmp_path, "backend": macs_backend}  # fmt: skip
    first = compress(model, 1.3, **run)
    assert len(computed) == 1 and first.plan.width
    assert any("channels kept by OBS" in line for line in first.log)
    for wg in first.plan.width:
        assert tuple(wg.kept) == kept(computed[0][wg.id], wg.width)
    again = compress(model, 1.3, **run)
    assert len(computed) == 1, "the orders come from the cache"
    assert [wg.kept for wg in again.plan.width] == [wg.kept for wg in first.plan.width]
    norm = compress(model, 1.3, **run, width_selection="norm")
    assert any("channels kept by weight norm" in line for line in norm.log)
    graph = analyze(model).graph
    groups = {g.id: g for g in channel_groups(graph, 1)}
    for wg in norm.plan.width:
        assert tuple(wg.kept) == strongest(channel_norms(graph, groups[wg.id]), wg.width)
    with pytest.raises(OnnxMergeError, match="unknown channel selection"):
        compress(model, 1.3, **run, width_selection="random")


def _head_model(head: str) -> onnx.ModelProto:
    """x (1,3,6,6) -> B: 1x1 conv 4 -> Relu -> b, then `head`: "dup" Concat(b, b) -> 1x1
    conv 3; "matmul" Flatten -> MatMul (144 x 3); "dense" the same + Add (tf2onnx's bias)."""
    rng = np.random.default_rng(11)
    h = helper
    inits = {"wb": rng.standard_normal((4, 3, 1, 1)), "bb": rng.standard_normal(4)}
    nodes = [h.make_node("Conv", ["x", "wb", "bb"], ["b0"], name="B"),
             h.make_node("Relu", ["b0"], ["b"], name="rb")]  # fmt: skip
    if head == "dup":
        inits["wc"] = rng.standard_normal((3, 8, 1, 1))
        nodes += [h.make_node("Concat", ["b", "b"], ["bb2"], name="cat", axis=1),
                  h.make_node("Conv", ["bb2", "wc"], ["y"], name="C")]  # fmt: skip
        shape = [1, 3, 6, 6]
    else:
        inits["wm"] = rng.standard_normal((144, 3))
        last = "y" if head == "matmul" else "m"
        nodes += [h.make_node("Flatten", ["b"], ["f"], name="flat", axis=1),
                  h.make_node("MatMul", ["f", "wm"], [last], name="M")]  # fmt: skip
        if head == "dense":
            inits["bm"] = rng.standard_normal(3)
            nodes.append(h.make_node("Add", ["m", "bm"], ["y"], name="add"))
        shape = [1, 3]
    graph = h.make_graph(
        nodes, head, [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _head_setup(head: str):
    analysis = analyze(_head_model(head))
    (group,) = [g for g in channel_groups(analysis.graph, 1) if g.prunable]
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(6)]
    order = channel_orders(analysis.graph, analysis.reference, [group], feeds, ridge=1e-9)
    b = np.asarray(capture(analysis.reference, feeds, ["b"])["b"], np.float64)
    return analysis, order[group.id], b


def test_a_consumer_reading_a_group_twice_loses_both_copies():
    """Concat(b, b): cutting channel j removes columns j and 4 + j of C together, so the first
    removal is the channel least squares misses least without both (not with either alone)."""
    analysis, order, b = _head_setup("dup")
    x = np.concatenate([b, b], 1).transpose(0, 2, 3, 1).reshape(-1, 8)
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    wc = next(t for t in analysis.reference.graph.initializer if list(t.dims) == [3, 8, 1, 1])
    y = x[:, :8] @ numpy_helper.to_array(wc).reshape(3, 8).T
    misses = []
    for j in range(4):
        keep = [c for c in range(9) if c not in (j, 4 + j)]
        theta, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        misses.append(float(((x[:, keep] @ theta - y) ** 2).sum()))
    assert order[0] == int(np.argmin(misses)), (order, misses)


@pytest.mark.parametrize("head", ["matmul", "dense"])
def test_a_head_not_refit_costs_what_it_loses_mean_included_unless_a_bias_takes_it(head):
    """A MatMul head is not refit: a channel costs the energy of its 36 lost features through
    the weight; an Add after it (a bias) takes their mean, so then only the centred part."""
    analysis, order, b = _head_setup(head)
    f = b.reshape(len(b), 4, 36)
    if head == "dense":
        f = f - f.mean(0)
    wm = next(t for t in analysis.reference.graph.initializer if list(t.dims) == [144, 3])
    w = numpy_helper.to_array(wm).astype(np.float64).reshape(4, 36, 3)
    lost = [float(((f[:, j] @ w[j]) ** 2).sum()) for j in range(4)]
    assert order == [int(j) for j in np.argsort(lost)], (order, lost)


def test_a_grouped_consumer_orders_by_what_its_dense_equal_loses():
    """A grouped conv (2 conv groups) is ordered as the dense conv it equals, not refit: a
    channel costs what its centred columns add to the output through its own group's rows
    (float64 numpy on the captured tensor)."""
    from graphs import G

    b = G(seed=3)
    a = b.node("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8, pads=[1] * 4, name="A")])
    model = b.model([(b.conv(a, 8, 4, group=2, pads=[1] * 4, name="C", out="y"), None)])
    analysis = analyze(model)
    (g,) = [g for g in channel_groups(analysis.graph, 1) if g.prunable]
    assert g.blocks == 2
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    order = channel_orders(analysis.graph, analysis.reference, [g], feeds)[g.id]
    x = np.asarray(capture(analysis.reference, feeds, [a])[a], np.float64)
    p = _patches(x)[:, :72]
    p -= p.mean(0)
    wc = next(t for t in analysis.reference.graph.initializer if list(t.dims) == [4, 4, 3, 3])
    w = numpy_helper.to_array(wc).astype(np.float64)  # rows 0-1 read channels 0-3, 2-3 4-7
    lost = [((p[:, 9 * j : 9 * j + 9] @ w[2 * (j // 4) : 2 * (j // 4) + 2, j % 4].reshape(2, 9).T)
             ** 2).sum() for j in range(8)]  # fmt: skip
    assert order == [int(j) for j in np.argsort(lost)], (order, lost)


def _lifted(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (1-D convs) with every Conv as the 2-D conv it equals with a height of 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if len(t.dims) == 3:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :, None], t.name))
    for node in out.graph.node:
        for a in node.attribute:
            if a.name == "pads":
                a.ints[:] = [0, a.ints[0], 0, a.ints[1]]
    for v in (*out.graph.input, *out.graph.output):
        v.type.tensor_type.shape.dim.insert(2, onnx.TensorShapeProto.Dimension(dim_value=1))
    return out


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_1d_consumers_order_is_its_height_1_twins(seed):
    """OBS orders the channels a 1-D conv consumes as it orders them for the 2-D conv it
    equals with a height of 1 (that path is checked against least squares above): the same
    removal order on the same data, for the group read by a dense and a grouped consumer."""
    from graphs import conv1d

    model = conv1d(length=48, seed=seed % 5)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, 3, 48)).astype(np.float32) for _ in range(4)]
    orders = []
    for m, feeds in (
        (model, [{"x": x} for x in xs]),
        (_lifted(model), [{"x": x[:, :, None]} for x in xs]),
    ):
        analysis = analyze(m)
        groups = [g for g in channel_groups(analysis.graph, 1) if g.prunable]
        orders.append(channel_orders(analysis.graph, analysis.reference, groups, feeds))
    assert orders[0] and orders[0] == orders[1]


def test_obs_orders_a_group_only_a_conv_transpose_reads():
    """B (4 channels, 0 and 1 copies of one large channel) feeds only a ConvTranspose (2x2,
    stride 2): OBS orders it as the conv the ConvTranspose equals on its zero-inserted input,
    keeps one copy where the norms keep both, and the refit misses less."""
    from onnxmerge.calibration.fit import fit_conv
    from onnxmerge.conv_transpose import as_conv, zero_insert

    rng = np.random.default_rng(3)
    wb = rng.standard_normal((4, 3, 1, 1))
    wb[1] = wb[0] = 3 * np.abs(rng.standard_normal((3, 1, 1)))
    wb[2], wb[3] = 0.3 * rng.standard_normal((3, 1, 1)), 0.5 * rng.standard_normal((3, 1, 1))
    bb = np.abs(rng.standard_normal(4))
    bb[1] = bb[0]
    wt, bt = rng.standard_normal((4, 5, 2, 2)), rng.standard_normal(5)
    inits = {"wb": wb, "bb": bb, "wt": wt, "bt": bt}
    nodes = [
        helper.make_node("Conv", ["x", "wb", "bb"], ["b0"], name="B"),
        helper.make_node("Relu", ["b0"], ["b"], name="rb"),
        helper.make_node("ConvTranspose", ["b", "wt", "bt"], ["y"], name="T",
                         kernel_shape=[2, 2], strides=[2, 2]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 12, 12])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )  # fmt: skip
    analysis = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (g,) = [g for g in channel_groups(analysis.graph, 1) if g.prunable]
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(6)]
    obs = kept(channel_orders(analysis.graph, analysis.reference, [g], feeds)[g.id], 2)
    assert strongest(channel_norms(analysis.graph, g), 2) == (0, 1)
    assert len({0, 1} & set(obs)) == 1
    x = np.asarray(capture(analysis.reference, feeds, ["b"])["b"], np.float64)
    y = np.concatenate([capture(analysis.reference, [f], ["y"])["y"] for f in feeds])

    def miss(keep) -> float:  # least squares of the ConvTranspose on the kept channels
        fit = fit_conv(as_conv(wt[list(keep)], bt, (0, 0, 0, 0)),
                       zero_insert(x[:, list(keep)], (2, 2)), y, ridge=1e-9)  # fmt: skip
        return fit.error_after

    assert miss(obs) < 0.5 * miss((0, 1))
