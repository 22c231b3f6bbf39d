"""Channel dependency groups (kinds.width.groups) and the pass that prunes them.

Exactness: in every model, ~30% of each prunable group's channels are zeroed (producer rows
and bias, tied shifts such as depthwise biases and per-channel Add constants, spec §2.4)
and, separately, removed by `prune_channels`; the two agree under ONNX Runtime. Then group
counts on the zoo (spec §2.4's table), and the cases that must stay fixed, each with its
reason.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from graphs import G, conv1d, init_batchnorm, resnext
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.analysis import Analysis, analyze
from onnxmerge.cli.inspect_text import groups_text
from onnxmerge.graph.names import Names
from onnxmerge.graph.tensors import const
from onnxmerge.kinds.width.groups import Group, channel_groups, groups_report
from onnxmerge.passes.prune_channels import kept_features, lost_inputs, prune_channels
from onnxmerge.runtime import compare_outputs

# model -> (kwargs, groups, prunable): spec §2.4's counts, at widths where rounding keeps
# the full-width topology (MobileNetV2 at 0.25 loses a residual, MobileNetV3 at 0.5 one expand).
ZOO = {
    "resnet18": ({"width": 0.25}, 14, 12),
    "resnet50": ({"width": 0.25}, 39, 37),
    "mobilenet_v2": ({"width": 0.5}, 27, 25),
    "mobilenet_v3": ({"width": 1.0}, 22, 20),
    "efficientnet_b0": ({"width": 0.5}, 42, 40),
    "vgg": ({"width": 0.25}, 10, 8),
    "yolo": ({"width": 0.25}, 26, 24),
}


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _choose(groups: list[Group], frac: float = 0.3, seed: int = 0) -> dict[int, np.ndarray]:
    """Random kept channels of every prunable group, as many in each of its conv groups."""
    rng = np.random.default_rng(seed)
    out = {}
    for g in (g for g in groups if g.prunable):
        size = g.width // g.blocks
        keep = size - max(1, round(frac * size))
        picks = [j * size + rng.choice(size, keep, replace=False) for j in range(g.blocks)]
        out[g.id] = np.sort(np.concatenate(picks))
    return out


def _zero(graph: gs.Graph, groups: list[Group], keep: dict, names: Names, mode: str) -> None:
    """An edit for Analysis.rewrite that silences the channels `keep` leaves out.

    "rows": they carry exactly 0 (producer rows and bias, at each producer's offset; tied
    shifts: depthwise biases, per-channel Add/Sub constants). "columns": every consumer
    ignores them (its input columns, HW-blocks after a Flatten, are zero)."""
    nodes = {n.name: n for n in graph.nodes}
    kept = kept_features(graph, groups, keep)

    def zeroed(node: gs.Node, i: int, index: tuple) -> None:
        v = const(node.inputs[i]).copy()
        v[index] = 0
        node.inputs[i] = gs.Constant(names.fresh(f"{node.name}_zeroed"), v)

    for g in groups:
        drop = np.setdiff1d(np.arange(g.width), keep.get(g.id, np.arange(g.width)))
        if not len(drop):
            continue
        for name, off in g.consumers if mode == "columns" else ():
            node = nodes[name]
            x = node.inputs[0]
            unit = next(m.unit for m in g.members if m.tensor == x.name)
            cols = (off + drop[:, None] * unit + np.arange(unit)).ravel()
            rows_first = node.op == "MatMul" or (node.op == "Gemm" and not node.attrs.get("transB"))
            group = int(node.attrs.get("group", 1))
            if node.op == "ConvTranspose":  # weight (C_in, C_out, ...): inputs on axis 0
                zeroed(node, 1, (cols,))
                continue
            if group > 1:  # each conv group's rows read its own block of columns
                per_in, per_out = x.shape[1] // group, node.outputs[0].shape[1] // group
                for c in cols:
                    j = c // per_in
                    zeroed(node, 1, (slice(j * per_out, (j + 1) * per_out), c % per_in))
                continue
            zeroed(node, 1, (cols,) if rows_first else (slice(None), cols))
        for name, off in g.producers if mode == "rows" else ():
            node, rows = nodes[name], off + drop
            rows_first = node.op == "Conv" or node.attrs.get("transB", 0)
            zeroed(node, 1, (rows,) if rows_first else (slice(None), rows))
            if len(node.inputs) > 2 and node.inputs[2].name and const(node.inputs[2]).size > 1:
                zeroed(node, 2, (..., rows))
        for name in g.ties if mode == "rows" else ():
            node = nodes[name]
            y = node.outputs[0]
            gone = np.setdiff1d(np.arange(y.shape[1]), kept[y.name])
            if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 2:  # depthwise bias
                zeroed(node, 2, (gone,))
            for i, t in enumerate(node.inputs if node.op in ("Add", "Sub") else ()):
                v = const(t)
                ax = 1 - (len(y.shape) - (v.ndim if v is not None else 0))
                if v is not None and ax >= 0 and v.shape[ax] == y.shape[1]:
                    zeroed(node, i, (slice(None),) * ax + (gone,))


def _check_exact(
    a: Analysis, groups: list[Group], frac: float = 0.3, modes=("rows", "columns"), same=True
):
    """Silenced and pruned networks agree; parameters drop; groups survive pruning (unless
    not `same`: a multiplier depthwise cut to multiplier 1 ties its sides)."""
    keep = _choose(groups, frac)
    assert keep, "no prunable group"
    pruned, _ = a.rewrite(lambda g, m, n: prune_channels(g, groups, keep, n))
    onnx.checker.check_model(pruned, full_check=True)
    assert _params(pruned) < _params(a.reference)
    for mode in modes:
        silenced, _ = a.rewrite(
            lambda g, m, n, mode=mode: _zero(g, groups, keep, n, mode), check=False
        )
        changed = compare_outputs(a.model, silenced).values()
        assert max(d.max_rel for d in changed) > 1e-3, mode
        diffs = compare_outputs(silenced, pruned)
        assert all(d.max_rel <= 1e-5 for d in diffs.values()), (mode, diffs)
    if not same:
        return keep
    # the pruned graph has the same groups, narrower (below width 2 they are fixed)
    graph = a.graph.copy()
    prune_channels(graph, groups, keep, Names.of_graph(graph))
    graph.cleanup()
    after = channel_groups(graph)
    assert [g.width for g in after] == [len(keep.get(g.id, range(g.width))) for g in groups]
    assert [g.prunable or g.reason.startswith("width") for g in after] == [
        g.prunable for g in groups
    ]
    return keep


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_groups_and_exact_pruning(name):
    kwargs, count, prunable = ZOO[name]
    a = analyze(zoo.MODELS[name](size=64, **kwargs))
    groups = channel_groups(a.graph)
    assert (len(groups), sum(g.prunable for g in groups)) == (count, prunable)
    fixed = [g for g in groups if not g.prunable]  # the image input and the output
    assert [g.reason.split(" ")[1] for g in fixed] == ["input", "output"]
    assert all(g.producers for g in groups[1:])
    if name == "resnet18":  # 8 block-internal groups; 4 streams of 3 producers (stem or
        # downsample, and each block's last conv)
        assert sorted(len(g.producers) for g in groups if g.prunable) == [1] * 8 + [3] * 4
    if name == "yolo":  # SPPF: one group 4 times in the Concat before its last conv
        assert max(len(g.members) - len({m.tensor for m in g.members}) for g in groups) == 3
    if name in ("mobilenet_v3", "efficientnet_b0"):  # the SE gate conv produces the expand group
        se = [g for g in groups if len(g.producers) == 2 and g.ties]
        assert len(se) >= 5 and all(any(m.tensor.startswith("mul") for m in g.members) for g in se)
    _check_exact(a, groups)
    report = json.loads(json.dumps(groups_report(groups)))
    assert (report["groups"], report["prunable"]) == (count, prunable)
    assert report["list"][0]["reason"] == "graph input 'input'"


def test_align_and_validation():
    a = analyze(zoo.vgg(width=0.25, size=32))
    groups = channel_groups(a.graph, align=16)
    narrow = [g for g in groups if g.width == 16]
    assert narrow and all(g.reason == "width 16 < 2 x align 16" for g in narrow)
    assert all(g.prunable for g in groups if g.width >= 32 and g.id not in (0, len(groups) - 1))
    graph = a.graph.copy()
    names = Names.of_graph(graph)
    for bad in ({0: [0, 1]}, {1: [3, 2]}, {1: []}, {1: [16]}, {99: [0]}):
        with pytest.raises(ValueError):
            prune_channels(graph, groups, bad, names)
    prune_channels(graph, groups, {0: [0, 1, 2]}, names)  # a fixed group, kept whole: no-op


# ------------------------------------------------------------------ small graphs


def _groups(model: onnx.ModelProto) -> tuple[Analysis, list[Group], dict[str, Group]]:
    """The analysis, its groups and, per tensor name, the group of its first channel."""
    a = analyze(model)
    groups = channel_groups(a.graph)
    at = {m.tensor: g for g in reversed(groups) for m in g.members}
    return a, groups, at


def _conv(b: G, x: str, cin: int, cout: int, k: int = 3, **kw) -> str:
    return b.conv(x, cin, cout, k, pads=[k // 2] * 4, **kw)


def _conv_relu(b: G, x: str, cin: int, cout: int, **kw) -> str:
    return b.node("Relu", [_conv(b, x, cin, cout, **kw)])


def test_channel_shuffle_is_fixed():
    b = G()
    r = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 8)
    s = b.node("Reshape", [r, b.const([1, 2, 4, 8, 8], dtype=np.int64)])
    s = b.node("Transpose", [s], perm=[0, 2, 1, 3, 4])
    s = b.node("Reshape", [s, b.const([1, 8, 8, 8], dtype=np.int64)])
    out = _conv(b, s, 8, 4, out="y")
    _, _, at = _groups(b.model([(out, None)]))
    assert not at[r].prunable and "Reshape" in at[r].reason and "moves the channel" in at[r].reason
    assert not at[s].prunable


def test_reductions_over_channels_are_fixed():
    """Softmax over channels and a spatial attention's channel mean fix their input's group;
    a Softmax over W and the attention map's broadcast (channel 1) do not."""
    b = G()
    x = b.input("x", [1, 3, 8, 8])
    c1 = _conv(b, x, 3, 8)
    s1 = b.node("Softmax", [c1], axis=1)
    r2 = _conv_relu(b, s1, 8, 8)
    att = b.node("Sigmoid", [b.node("ReduceMean", [r2], axes=[1], keepdims=1)])
    m = b.node("Mul", [r2, att])
    c3 = _conv(b, m, 8, 8)
    s3 = b.node("Softmax", [c3], axis=-1)  # over W: channels stay
    out = _conv(b, s3, 8, 4, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    assert not at[c1].prunable and "Softmax" in at[c1].reason
    assert "normalizes over channels" in at[c1].reason
    assert at[m] is at[r2] and "ReduceMean" in at[r2].reason and "over channels" in at[r2].reason
    assert at[att].width == 1 and at[att] is not at[r2]
    assert at[c3].prunable and at[s3] is at[c3]
    _check_exact(a, groups, modes=("columns",))  # softmax(0) != 0: zeroed rows would show


def test_grouped_convs_cut_in_equal_shares():
    """A grouped conv's sides fall into `group` blocks, each cut alike; a block of one channel
    (a multiplier depthwise's input) fixes its group, and every cut stays exact."""
    b = G()
    r = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 8)
    g = b.node("Relu", [_conv(b, r, 8, 8, group=2)])
    m = _conv(b, g, 8, 16, group=8)  # a depthwise with multiplier 2
    dw = _conv(b, m, 16, 16, group=16)  # a true depthwise: tie
    out = _conv(b, dw, 16, 4, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    assert at[r].prunable and at[r].blocks == 2
    assert not at[g].prunable and "one channel per conv group (8 groups)" in at[g].reason
    assert at[m].prunable and at[m].blocks == 8 and at[dw] is at[m]
    # inspect names the grouped conv as what reads and makes the groups it touches
    lines = groups_text(groups_report(groups)).splitlines()
    for t in (r, g):  # the group's line, then its makers and readers
        i = lines.index(next(x for x in lines if x.startswith(f"  group {at[t].id:>3} ")))
        assert "read by -" not in lines[i + 1] and "made by -" not in lines[i + 1]
    assert at[r].consumers[0][0] == at[g].producers[0][0]  # the group=2 conv
    assert any(x.endswith("prunable in 2 equal conv groups") for x in lines)
    # alignment 16 fixes a plain 8-wide group, not one that conv groups split (cut per group)
    wide = {g.id: g for g in channel_groups(a.graph, align=16)}
    assert wide[at[r].id].prunable and wide[at[m].id].prunable
    _check_exact(a, groups, frac=0.5, same=False)  # m becomes a plain depthwise
    graph = a.graph.copy()
    with pytest.raises(ValueError, match="conv groups must keep as many"):
        prune_channels(graph, groups, {at[r].id: [0, 1, 2, 4]}, Names.of_graph(graph))


@settings(max_examples=12, deadline=None)
@given(group=st.sampled_from([2, 3, 4]), per=st.integers(3, 5), seed=st.integers(0, 99))
def test_resnext_inner_groups_prune_exactly(group: int, per: int, seed: int):
    a = analyze(resnext(group * per, group, seed))
    groups = channel_groups(a.graph)
    inner = [g for g in groups if g.blocks == group]
    assert len(inner) == 2 and all(g.prunable for g in inner)
    _check_exact(a, groups, frac=0.4)


def test_unet_conv_transpose_and_concat_skip_prune_exactly():
    """A UNet step: a ConvTranspose upsamples (consumer of its input, producer of its output
    channels), a Concat joins it to the skip; a depthwise ConvTranspose ties its sides, a
    grouped one is fixed."""
    b = G()
    skip = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 8)
    down = _conv_relu(b, skip, 8, 12, strides=[2, 2])
    up = b.node("Relu", [b.conv_transpose(down, 12, 6)])
    dw = b.conv_transpose(_conv_relu(b, down, 12, 12), 12, 12, group=12)
    cat = b.node("Concat", [up, skip, b.node("Relu", [dw])], axis=1)
    out = _conv(b, cat, 26, 4, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    assert at[up].prunable and at[down].prunable and at[skip].prunable
    assert at[dw].prunable and len(at[dw].members) >= 3  # the depthwise ConvTranspose's sides
    assert [n for n, _ in at[up].producers] == [n.name for n in a.graph.nodes if
                                                n.op == "ConvTranspose"][:1]  # fmt: skip
    _check_exact(a, groups)
    b2 = G()
    x = _conv_relu(b2, b2.input("x", [1, 3, 8, 8]), 3, 8)
    g = b2.conv_transpose(x, 8, 8, group=2)
    _, _, at2 = _groups(b2.model([(_conv(b2, g, 8, 4, out="y"), None)]))
    assert not at2[x].prunable and "grouped ConvTranspose (group=2)" in at2[x].reason


def test_mid_network_graph_output_is_fixed():
    b = G()
    r = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 8, out="mid")
    r2 = _conv_relu(b, r, 8, 8)
    out = _conv(b, r2, 8, 4, out="y")
    a, groups, at = _groups(b.model([(out, None), ("mid", None)]))
    assert not at["mid"].prunable and "graph output 'mid'" in at["mid"].reason
    assert at[r2].prunable
    _check_exact(a, groups)


@pytest.mark.parametrize("by", ["scales", "sizes"])
def test_unet_skip_through_resize_and_concat(by):
    b = G()
    x1 = _conv_relu(b, b.input("x", [1, 3, 16, 16]), 3, 8)
    p = b.node("MaxPool", [x1], kernel_shape=[2, 2], strides=[2, 2])
    x2 = _conv_relu(b, p, 8, 16)
    if by == "scales":
        up = b.node("Resize", [x2, "", b.const([1, 1, 2, 2])], mode="nearest")
    else:  # sizes hold the channel count: rewritten
        sizes = b.const([1, 16, 16, 16], dtype=np.int64)
        up = b.node("Resize", [x2, "", "", sizes], mode="nearest")
    cat = b.node("Concat", [up, x1], axis=1)
    d = _conv_relu(b, cat, 24, 8)
    out = _conv(b, d, 8, 2, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    g1, g2 = at[x1], at[x2]
    assert g1.prunable and g2.prunable and at[up] is g2 and at[p] is g1
    conv_d = next(n.name for n in a.graph.nodes if n.op == "Conv" and n.inputs[0].name == cat)
    assert (conv_d, 16) in g1.consumers and (conv_d, 0) in g2.consumers and at[d].prunable
    assert {(m.tensor, m.start, m.end) for m in g1.members} >= {(cat, 16, 24), (x1, 0, 8)}
    _check_exact(a, groups)


def test_se_gate_ties_to_the_expand_group():
    b = G()
    y = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 16)
    s = b.node("GlobalAveragePool", [y])
    s = _conv_relu(b, s, 16, 4, k=1, name="squeeze")
    gate = b.node("Sigmoid", [_conv(b, s, 4, 16, k=1, name="excite")])
    z = b.node("Mul", [y, gate])
    out = _conv(b, z, 16, 4, k=1, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    g = at[y]
    assert g.prunable and at[gate] is g and at[z] is g
    assert ("excite", 0) in g.producers and ("squeeze", 0) in g.consumers
    assert at[s].prunable and at[s].width == 4 and at[s] is not g
    _check_exact(a, groups)


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_slice_split_prelu_and_flatten_gemm(opset):
    """Channel Slice and an equal Split without sizes (opset 18: `num_outputs`), PRelu
    slopes and a per-channel Add after them, and a Flatten of HW > 1 into a Gemm (channel c
    -> features [c*16, c*16+16)). Pruning leaves the Split unequal: sizes are written."""
    b = G(opset=opset)
    r = _conv_relu(b, b.input("x", [1, 3, 8, 8]), 3, 16)
    sl = b.node("Slice", [r, *(b.const([v], dtype=np.int64) for v in (4, 10, 1))])
    halves = ["h0", "h1"]
    equal = {"num_outputs": 2} if opset >= 18 else {}
    b.nodes.append(onnx.helper.make_node("Split", [r], halves, name="split", axis=1, **equal))
    pr = b.node("PRelu", [_conv(b, sl, 6, 8), b.const(np.linspace(0.1, 0.3, 8).reshape(8, 1, 1))])
    pr = b.node("Add", [pr, b.const(np.linspace(-1, 1, 8).reshape(1, 8, 1, 1))])
    z = b.node("Add", [b.node("Relu", [_conv(b, pr, 8, 8)]), _conv(b, "h1", 8, 8)])
    z = b.node("Relu", [b.node("Add", [z, _conv(b, "h0", 8, 8)])])
    z = b.node("MaxPool", [z], kernel_shape=[2, 2], strides=[2, 2])
    f = b.node("Flatten", [z], axis=1)
    w = b.const(b.rng.standard_normal((10, 8 * 16)) * 0.1)
    out = b.node("Gemm", [f, w, b.const(np.zeros(10))], transB=1, out="y")
    a, groups, at = _groups(b.model([(out, None)]))
    assert [(m.start, m.end) for m in groups[1].members if m.tensor == r] == [(0, 4)]
    cuts = {(m.start, m.end) for g in groups for m in g.members if m.tensor == r}
    assert cuts == {(0, 4), (4, 8), (8, 10), (10, 16)}
    gemm = next(n.name for n in a.graph.nodes if n.op == "Gemm")
    assert at[f].members[-1].unit == 16 and (gemm, 0) in at[f].consumers
    assert all(g.prunable for g in groups[1:-1])
    keep = _check_exact(a, groups, frac=0.4)
    kept = kept_features(a.graph, groups, keep)
    assert (len(kept["h0"]), len(kept["h1"])) == (4, 5)  # 2 + 2 of 4 + 4, 1 + 4 of 2 + 6


# ------------------------------------------------------------------ torch exports


def _torch_nets():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def cbr(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
        conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        return [conv, nn.BatchNorm2d(cout), act()]

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*cbr(cin, cout, s=stride), *cbr(cout, cout)[:2])
            self.short = nn.Sequential(*cbr(cin, cout, 1, stride)[:2]) if stride > 1 else None

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.short is None else self.short(x)))

    class TinyResNet(nn.Module):  # a Flatten of 16 x 8 x 8 into the classifier
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(*cbr(3, 8), Basic(8, 8, 1), Basic(8, 16, 2))
            self.head = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            return self.head(torch.flatten(self.net(x), 1))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            h, act = cin * t, nn.ReLU6
            layers = [*cbr(cin, h, 1, act=act), *cbr(h, h, 3, stride, h, act=act)]
            self.body = nn.Sequential(*layers, *cbr(h, cout, 1)[:2])
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class TinyMobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                *cbr(3, 8, s=2, act=nn.ReLU6), Inverted(8, 8, 1, 2), Inverted(8, 16, 2, 3),
                Inverted(16, 16, 1, 3),
            )  # fmt: skip
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.net(x).mean((2, 3)))

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
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / f"{arch}.onnx"
    if exporter == "torchscript":
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)
    else:
        torch.onnx.export(net, (x,), dynamo=True).save(str(path))
    a = analyze(path)
    groups = channel_groups(a.graph)
    fixed = [g for g in groups if not g.prunable]
    assert len(fixed) == 2 and all("graph " in g.reason for g in fixed), [g.reason for g in fixed]
    # ResNet: stem + stage-1 stream, 2 block-internal, stage-2 stream feeding the Flatten's
    # 16 x 64 features; MobileNetV2: stem + block-1 stream, 3 expand groups, the last stream
    assert (len(groups), len(groups) - len(fixed)) == ((6, 4) if arch == "resnet" else (7, 5))
    if arch == "resnet":
        gemm = next(n.name for n in a.graph.nodes if n.op == "Gemm")
        assert groups[4].members[-1].unit == 64 and groups[4].consumers[-1] == (gemm, 0)
    _check_exact(a, groups)


@pytest.mark.slow
def test_legacy_export_channel_shuffle_gets_shapes_from_the_runtime(tmp_path):
    """A legacy (TorchScript) export computes a ShuffleNet unit's Reshape target and the next
    unit's chunk bounds from Shape -> Gather -> Div, which ONNX data propagation cannot
    follow: every tensor after the second unit's chunk had no shape and its convs were in no
    chain (a reviewer's ResNeXt/ShuffleNet mix lost 11 of 39 convs). With --input-shape,
    one ONNX Runtime run fills them in."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.branch = nn.Sequential(
                nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
            )
            self.tail = nn.Sequential(
                nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 16, 3, padding=1), nn.ReLU()
            )
            self.head = nn.Linear(16, 10)

        def unit(self, x):
            a, b = x.chunk(2, dim=1)
            x = torch.cat([a, self.branch(b)], 1)
            n, c, h, w = x.size()
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

        def forward(self, x):  # the second unit's chunk reads the first's computed shape
            x = self.unit(self.unit(self.stem(x)))
            return self.head(self.tail(x).mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path / "shuffle.onnx"
    axes = {"x": {0: "batch"}}
    torch.onnx.export(Shuffle().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes=axes)  # fmt: skip
    assert any(n.op_type == "Div" for n in onnx.load(str(path)).graph.node)
    a = analyze(path, {"x": (1, 3, 16, 16)})
    convs = [n for n in a.graph.nodes if n.op == "Conv"]
    assert len(convs) == 7 and all(len(n.inputs[0].shape) == 4 for n in convs)
    assert all(isinstance(d, int) for n in convs for d in n.outputs[0].shape)
    groups = channel_groups(a.graph)
    inner = [g for g in groups if g.prunable and g.width == 24]  # the tail's, after the shuffle
    assert len(inner) == 1
    _check_exact(a, groups)


def test_conv1d_dense_and_grouped_consumers_prune_exactly():
    """1-D convs (weights (O, I / group, k)): a group read by a dense and a grouped Conv1d
    prunes exactly, and the pass names what each consumer loses."""
    a, groups, at = _groups(conv1d())
    assert at["r"].prunable and at["r"].blocks == 2
    keep = _check_exact(a, groups, frac=0.5)
    lost = lost_inputs(a.graph, kept_features(a.graph, groups, keep))
    assert sorted(lost) == ["c2", "c3"] and all(v.weight.shape == (4, 4) for v in lost.values())
