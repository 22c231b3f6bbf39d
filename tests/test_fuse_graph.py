"""`onnxmerge fuse` on whole ONNX graphs, with ONNX Runtime on the unmerged graph as reference.

Random linear runs of 2-5 convs (odd and even kernels, strides, dilations, asymmetric pads,
dense / grouped / depthwise, bias or not, BatchNormalization, a leading Pad node, an identity
residual and a strided 1x1 shortcut conv) are written with onnx.helper in two forms:

* fine-tune form: all padding on the first conv (later convs pad 0), skips aligned to the
  larger maps with a Slice crop or a zero Pad. Margins m_n = 0, m_i = p_{i+1} + s_{i+1} m_{i+1}.
  `fuse` must merge the run into one Conv that is exact everywhere.
* direct form: every conv keeps its own padding. `fuse --direct` merges it, exact in the
  interior with a border band reported; plain `fuse` leaves it (or the padded part) alone.

Plus fine-tune graphs that onnxmerge itself writes for zoo models, fused back.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from partitions import build_segments, candidates_by_start, partition

from onnxmerge import api, zoo
from onnxmerge.errors import OnnxMergeError
from onnxmerge.kinds.depth.candidates import enumerate_candidates

Pads = tuple[int, int, int, int]  # top, left, bottom, right
ZERO: Pads = (0, 0, 0, 0)
INT64_MAX = np.iinfo(np.int64).max

# ------------------------------------------------------------------ reference helpers


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # The reference must be the graph as written, not ORT's own fusions of it.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(model: onnx.ModelProto, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name not in inits:
            shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
            out[v.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(ref - got))
    return float(err / scale) if scale > 0 else float(err)


def max_rel(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 1) -> float:
    feeds = feeds_for(a, seed)
    return max(rel_error(x, y) for x, y in zip(ort_run(a, feeds), ort_run(b, feeds), strict=True))


def n_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


# ------------------------------------------------------------------ random linear runs


@dataclass(frozen=True)
class ConvDef:
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: Pads  # the direct form's pads
    groups: int = 1
    bias: bool = True
    bn: bool = False

    def out_hw(self, hw: tuple[int, int], pads: Pads | None = None) -> tuple[int, int]:
        t, l, b, r = self.pads if pads is None else pads
        ext = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel, strict=True)]
        return (
            (hw[0] + t + b - ext[0]) // self.stride[0] + 1,
            (hw[1] + l + r - ext[1]) // self.stride[1] + 1,
        )


@dataclass(frozen=True)
class Net:
    hw: tuple[int, int]
    c0: int
    convs: tuple[ConvDef, ...]
    identity: tuple[int, int] | None  # (a, b): position b += position a
    shortcut: tuple[int, int] | None  # (a, b): position b += Conv1x1(position a)
    shortcut_bias: bool = True
    shortcut_bn: bool = False
    pre_pad: Pads = ZERO  # how much of the first conv's padding a Pad node in front does
    shortcut_pad_node: bool = False  # fine-tune form: shortcut padding as a Pad node
    slice_positive_ends: bool = False  # spell Slice ends as sizes, not negative offsets
    swap_add: bool = False  # Add(skip, main) instead of Add(main, skip)
    relu_end: bool = False
    seed: int = 0

    @property
    def length(self) -> int:
        return len(self.convs)

    def channels(self, p: int) -> int:
        return self.c0 if p == 0 else self.convs[p - 1].cout

    def sizes(self) -> list[tuple[int, int]]:
        """Nominal H x W at every position (direct form)."""
        hw = [self.hw]
        for c in self.convs:
            hw.append(c.out_hw(hw[-1]))
        return hw

    def shortcut_stride(self) -> tuple[int, int]:
        a, _ = self.shortcut
        return self.convs[a].stride

    def margins(self) -> list[Pads]:
        return margins([c.pads for c in self.convs], [c.stride for c in self.convs])

    def shortcut_crops(self) -> bool:
        """Fine-tune form: the shortcut reads a cropped map (a Slice before the shortcut)."""
        if not self.shortcut or self.shortcut[0] == 0:
            return False
        (a, b), s, m = self.shortcut, self.shortcut_stride(), self.margins()
        return any(s[k % 2] * m[b][k] < m[a][k] for k in range(4))

    def later_pads(self) -> bool:
        return any(any(c.pads) for c in self.convs[1:])


def residual_plans(n: int) -> list[tuple]:
    """(identity, shortcut) pairs the matcher can own: laminar, distinct ends, and no skip
    source right before a shortcut's end (there both Add inputs would read a branch point)."""
    ids = [None] + [(a, b) for a in range(n) for b in range(a + 1, n + 1)]
    scs = [None] + [(a, b) for a in range(n) for b in range(a + 2, n + 1)]
    plans = []
    for i, s in itertools.product(ids, scs):
        if i and s:
            (a, b), (c, d) = i, s
            laminar = (c <= a and b <= d) or (a <= c and d <= b) or b <= c or d <= a
            if not laminar or b == d or d - 1 == a:
                continue
        plans.append((i, s))
    return plans


def _group_options(cin: int, cout: int | None) -> dict[str, list[tuple[int, int]]]:
    """(groups, cout) choices by kind: dense, grouped, depthwise (multiplier 1 or 2)."""
    outs = list(range(1, 9)) if cout is None else [cout]
    kinds: dict[str, list[tuple[int, int]]] = {"dense": [(1, o) for o in outs]}
    grouped = [(g, o) for g in range(2, cin) if cin % g == 0 for o in outs if o % g == 0]
    depthwise = [(cin, o) for o in outs if cin > 1 and o in (cin, 2 * cin)]
    if grouped:
        kinds["grouped"] = grouped
    if depthwise:
        kinds["depthwise"] = depthwise
    return kinds


@st.composite
def nets(draw) -> Net:
    n = draw(st.integers(2, 5))
    hw = (draw(st.integers(8, 16)), draw(st.integers(8, 16)))
    c0 = draw(st.integers(1, 8))
    identity, shortcut = draw(st.sampled_from(residual_plans(n)))
    in_id = set(range(identity[0] + 1, identity[1] + 1)) if identity else set()
    in_sc = set(range(shortcut[0] + 1, shortcut[1] + 1)) if shortcut else set()
    convs: list[ConvDef] = []
    size, cin = hw, c0
    for i in range(1, n + 1):
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        ext = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        # "same" total padding split at random (even kernels make it asymmetric)
        top, left = draw(st.integers(0, ext[0])), draw(st.integers(0, ext[1]))
        same = (top, left, ext[0] - top, ext[1] - left)
        if i in in_id or (i in in_sc and i != shortcut[0] + 1):
            stride, pads = (1, 1), same  # shape-preserving: the skip must line up
        elif i in in_sc:
            s = draw(st.integers(1, 2))
            stride, pads = (s, s), same  # downsampling like the 1x1 shortcut
        else:
            stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
            pads = tuple(draw(st.integers(0, ext[k % 2])) for k in range(4))
            if any(size[k] + pads[k] + pads[k + 2] <= ext[k] for k in range(2)):
                pads = same  # keep every map at least 1 x 1
        forced = None
        if identity and i == identity[1]:  # the Add needs the skip's channel count
            forced = c0 if identity[0] == 0 else convs[identity[0] - 1].cout
        options = _group_options(cin, forced)
        kind = draw(st.sampled_from(sorted(options)))
        groups, cout = draw(st.sampled_from(options[kind]))
        bias, bn = draw(st.booleans()), draw(st.booleans())
        conv = ConvDef(cin, cout, kernel, stride, dilation, pads, groups, bias=bias, bn=bn)
        size = conv.out_hw(size)
        convs.append(conv)
        cin = cout
    first_pads = max_pads_first(convs)
    pre = tuple(draw(st.integers(0, first_pads[k])) for k in range(4))
    flag = st.booleans()
    return Net(
        hw=hw,
        c0=c0,
        convs=tuple(convs),
        identity=identity,
        shortcut=shortcut,
        shortcut_bias=draw(flag),
        shortcut_bn=draw(flag),
        pre_pad=pre,
        shortcut_pad_node=draw(flag),
        slice_positive_ends=draw(flag),
        swap_add=draw(flag),
        relu_end=draw(flag),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def margins(pads: list[Pads], strides: list[tuple[int, int]]) -> list[Pads]:
    """m_n = 0, m_i = p_{i+1} + s_{i+1} * m_{i+1} per side (index i = position)."""
    m = [ZERO]
    for p, s in zip(reversed(pads), reversed(strides), strict=True):
        nxt = m[0]
        m.insert(0, tuple(p[k] + s[k % 2] * nxt[k] for k in range(4)))
    return m


def max_pads_first(convs) -> Pads:
    """The smaller of the first conv's padding in the two forms (for the leading Pad node)."""
    m0 = margins([c.pads for c in convs], [c.stride for c in convs])[0]
    return tuple(min(a, b) for a, b in zip(m0, convs[0].pads, strict=True))


class _Graph:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        out = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel,
        stride,
        dilation,
        pads,
        groups,
        bias: bool,
        bn: bool,
        prefix: str = "conv",
    ) -> str:
        fan_in = cin // groups * kernel[0] * kernel[1]
        w = self.rng.normal(0, 1 / np.sqrt(fan_in), (cout, cin // groups, *kernel))
        inputs = [x, self.const(w.astype(np.float32), "W")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.5, cout).astype(np.float32), "B"))
        y = self.node(
            "Conv",
            inputs,
            prefix,
            kernel_shape=list(kernel),
            strides=list(stride),
            dilations=list(dilation),
            pads=list(pads),
            group=groups,
        )
        if bn:
            r = self.rng
            params = [
                r.uniform(0.5, 1.5, cout),
                r.normal(0, 0.5, cout),
                r.normal(0, 0.5, cout),
                r.uniform(0.5, 1.5, cout),
            ]
            y = self.node(
                "BatchNormalization",
                [y] + [self.const(p.astype(np.float32), "bn") for p in params],
                "bn",
                epsilon=1e-3,
            )
        return y

    def pad(self, x: str, pads: Pads) -> str:
        t, l, b, r = pads
        return self.node(
            "Pad",
            [x, self.const(np.array([0, 0, t, l, 0, 0, b, r], np.int64))],
            "pad",
            mode="constant",
        )

    def crop(self, x: str, crop: Pads, hw: tuple[int, int], positive_ends: bool) -> str:
        t, l, b, r = crop
        if positive_ends:
            ends = [hw[0] - b, hw[1] - r]
        else:
            ends = [-b if b else INT64_MAX, -r if r else INT64_MAX]
        return self.node(
            "Slice",
            [
                x,
                self.const(np.array([t, l], np.int64)),
                self.const(np.array(ends, np.int64)),
                self.const(np.array([2, 3], np.int64)),
            ],
            "slice",
        )


def build(net: Net, form: str) -> onnx.ModelProto:
    """The run as an ONNX model, in the "finetune" or the "direct" form."""
    g = _Graph(net.seed)
    n = net.length
    direct = [c.pads for c in net.convs]
    strides = [c.stride for c in net.convs]
    if form == "finetune":
        m = margins(direct, strides)
        conv_pads = [m[0]] + [ZERO] * (n - 1)
        phys = [ZERO] + m[1:]  # extra rows per side of each position's map
    else:
        conv_pads, phys = direct, [ZERO] * (n + 1)
    nominal = net.sizes()

    def physical_hw(p: int) -> tuple[int, int]:
        t, l, b, r = phys[p]
        return (nominal[p][0] + t + b, nominal[p][1] + l + r)

    def align(x: str, need: Pads, p: int, pad_node: bool = True) -> tuple[str, Pads]:
        """Crop where `need` < 0; zero-pad where > 0 (as a Pad node, or returned)."""
        crop = tuple(max(-v, 0) for v in need)
        extra = tuple(max(v, 0) for v in need)
        if any(crop):
            x = g.crop(x, crop, physical_hw(p), net.slice_positive_ends)
        if any(extra) and pad_node:
            x, extra = g.pad(x, extra), ZERO
        return x, extra

    pos = ["x"]
    for i, c in enumerate(net.convs, start=1):
        pads = conv_pads[i - 1]
        x = pos[-1]
        if i == 1 and any(net.pre_pad):
            x = g.pad(x, net.pre_pad)
            pads = tuple(p - q for p, q in zip(pads, net.pre_pad, strict=True))
        y = g.conv(x, c.cin, c.cout, c.kernel, c.stride, c.dilation, pads, c.groups, c.bias, c.bn)
        skip = None
        if net.identity and net.identity[1] == i:
            a = net.identity[0]
            need = tuple(phys[i][k] - phys[a][k] for k in range(4))
            skip, _ = align(pos[a], need, a)
        if net.shortcut and net.shortcut[1] == i:
            a = net.shortcut[0]
            s = net.shortcut_stride()
            need = tuple(s[k % 2] * phys[i][k] - phys[a][k] for k in range(4))
            src, extra = align(pos[a], need, a, pad_node=net.shortcut_pad_node)
            skip = g.conv(
                src,
                net.channels(a),
                c.cout,
                (1, 1),
                s,
                (1, 1),
                extra,
                1,
                net.shortcut_bias,
                net.shortcut_bn,
                prefix="shortcut",
            )
        if skip is not None:
            y = g.node("Add", [skip, y] if net.swap_add else [y, skip], "add")
        pos.append(y)
    out = g.node("Relu", [pos[-1]], "relu") if net.relu_end else pos[-1]
    h, w = nominal[-1]
    graph = helper.make_graph(
        g.nodes,
        f"run_{form}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, net.c0, *net.hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, net.channels(n), h, w])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)  # also checks the declared output shape
    return model


# ------------------------------------------------------------------ properties


# Each example takes ~10-60 ms (ONNX Runtime on tiny graphs): a few hundred fit in seconds.
def _settings(examples: int):
    return settings(
        deadline=None,
        max_examples=examples,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.mark.slow
@_settings(250)
@given(nets())
def test_finetune_form_fuses_to_one_exact_conv(net):
    model = build(net, "finetune")
    fused, report = api.fuse(model)
    assert n_convs(fused) == 1, (n_convs(fused), report)
    assert report.merged_groups == 1
    assert report.skipped_inexact == 0
    assert all(g.border is None for g in report.groups)
    assert max_rel(model, fused) <= 1e-5
    assert report.max_rel <= 1e-5


@pytest.mark.slow
@_settings(150)
@given(nets())
def test_direct_form(net):
    model = build(net, "direct")
    fused, report = api.fuse(model, direct=True)
    assert n_convs(fused) == 1, (n_convs(fused), report)
    assert len(report.groups) == 1
    group = report.groups[0]
    assert group.interior.max_rel <= 1e-5, group
    assert (group.border is not None) == net.later_pads(), group
    if not net.later_pads():
        assert max_rel(model, fused) <= 1e-5

    exact, ex_report = api.fuse(model)
    assert max_rel(model, exact) <= 1e-6
    assert ex_report.max_rel <= 1e-6
    assert all(g.border is None for g in ex_report.groups)
    if net.later_pads():
        assert n_convs(exact) > 1  # the run is not merged into one conv
        if ex_report.merged_groups == 0:
            assert ex_report.skipped_inexact > 0


def test_residual_plans_cover_both_kinds():
    plans = residual_plans(4)
    assert (None, None) in plans
    assert any(i and s for i, s in plans)
    assert ((1, 3), (0, 4)) in plans  # identity nested in a shortcut
    assert ((0, 3), (1, 3)) not in plans  # same end
    assert ((0, 2), (1, 3)) not in plans  # crossing


# ------------------------------------------------------------------ skipped_inexact


def _two_run(pads_after: list[Pads]) -> onnx.ModelProto:
    """3x3 convs on 4 channels at 12x12: the first pads 1, then one per entry of pads_after."""
    convs = [ConvDef(4, 4, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))]
    convs += [ConvDef(4, 4, (3, 3), (1, 1), (1, 1), p) for p in pads_after]
    return build(Net((12, 12), 4, tuple(convs), None, None), "direct")


def test_skipped_inexact_counts_a_run_left_unmerged():
    model = _two_run([(1, 1, 1, 1)])
    fused, report = api.fuse(model)
    assert n_convs(fused) == 2
    assert report.skipped_inexact == 1
    _, direct = api.fuse(model, direct=True)
    assert direct.skipped_inexact == 0 and direct.convs_after == 1


def test_skipped_inexact_is_never_negative():
    # pads: conv1 p1, conv2 p0 | conv3 p1, conv4 p0 -> exact cover (0,2),(2,4); direct (0,4)
    model = _two_run([ZERO, (1, 1, 1, 1), ZERO])
    fused, report = api.fuse(model)
    assert n_convs(fused) == 2
    assert report.skipped_inexact >= 0


def test_skipped_inexact_counts_unmerged_run_next_to_a_merge():
    # shortcut (0, 2] over a conv that pads: not exact; identity (2, 3] folds into conv 3.
    convs = (
        ConvDef(1, 1, (1, 1), (1, 1), (1, 1), ZERO, bias=False),
        ConvDef(1, 1, (1, 2), (1, 1), (1, 1), (0, 0, 0, 1), bias=False),
        ConvDef(1, 1, (1, 1), (1, 1), (1, 1), ZERO, bias=False),
    )
    net = Net((8, 8), 1, convs, identity=(2, 3), shortcut=(0, 2), shortcut_bias=False)
    model = build(net, "direct")
    _, direct = api.fuse(model, direct=True)
    assert direct.convs_after == 1
    fused, report = api.fuse(model)
    assert report.merged_groups == 1  # only the identity folded into conv 3
    assert n_convs(fused) == 4  # conv 1, conv 2 and the shortcut stay as they were
    assert report.skipped_inexact > 0


# ------------------------------------------------------------------ onnxmerge's fine-tune graphs


@functools.cache
def zoo_model(name: str) -> onnx.ModelProto:
    return zoo.MODELS[name](width=0.25, size=64)


def random_choices(m, rng: random.Random, max_kernel: int = 9) -> list:
    """A random partition of every mergeable chain into candidate segments (pruned or not)."""
    return partition(m, candidates_by_start(m, max_kernel), rng.choice)


def _zoo_forms(name: str, choices) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(merged, fine-tune) models of a zoo model for the same segment choices."""
    model = zoo_model(name)
    return build_segments(model, choices), build_segments(model, choices, "finetune")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_onnxmerge_finetune_graph_fuses_back(name, seed):
    m = api.analyze(zoo_model(name)).match
    choices = random_choices(m, random.Random(seed))
    merged, ft = _zoo_forms(name, choices)

    fused, report = api.fuse(ft)
    assert max_rel(ft, fused) <= 1e-5
    assert max_rel(merged, fused) <= 1e-5
    assert report.max_rel <= 1e-5
    assert all(g.border is None for g in report.groups)
    # Every chosen segment merges again; fuse may also join segments across a removed
    # activation, so it can only end up with fewer convs.
    assert n_convs(fused) <= n_convs(merged)


@pytest.mark.parametrize("case", ["resnet18", "synthetic"])
def test_shortcut_after_crop_is_matched(case):
    if case == "resnet18":
        # segment (2, 8] of ResNet-18's main chain holds the shortcut 4 -> 6
        merged, ft = _zoo_forms("resnet18", {1: [(2, 8, (3, 4, 5, 6, 7, 8))]})
        fused, _ = api.fuse(ft)
        assert max_rel(merged, fused) <= 1e-5
        assert n_convs(fused) <= n_convs(merged)
    else:
        # 1x1 -> 3x3 (its padding hoisted to the first conv) -> 1x1, shortcut 1 -> 3 (crop 1)
        convs = (
            ConvDef(2, 3, (1, 1), (1, 1), (1, 1), ZERO),
            ConvDef(3, 3, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            ConvDef(3, 4, (1, 1), (1, 1), (1, 1), ZERO),
        )
        net = Net((8, 8), 2, convs, identity=None, shortcut=(1, 3))
        assert net.shortcut_crops()
        model = build(net, "finetune")
        fused, _ = api.fuse(model)
        assert max_rel(model, fused) <= 1e-5
        assert n_convs(fused) == 1


def test_pruned_block_end_before_shortcut_add_fuses_back():
    merged, ft = _zoo_forms("resnet18", {1: [(4, 6, (5,))]})
    fused, _ = api.fuse(ft)
    assert max_rel(merged, fused) <= 1e-5
    assert n_convs(fused) <= n_convs(merged)


# ------------------------------------------------------------------ priced == emitted


def test_candidate_signature_is_the_emitted_conv():
    """Every candidate's priced geometry is the conv merge_group writes (a lone kept dilated
    conv stays dilated instead of becoming a larger undilated kernel)."""
    from onnxmerge.kinds.depth.segments import segment_linear

    d1 = ConvDef(4, 4, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    d2 = ConvDef(4, 4, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2))
    model = build(Net((12, 12), 4, (d1, d2, d1), None, None), "direct")
    (mc,) = api.analyze(model).match.chains
    lone = 0
    for c in enumerate_candidates([mc.chain], max_kernel=99):
        lin, sig = segment_linear(mc, c.segment), c.signature
        got = (lin.in_channels, lin.out_channels, lin.kernel, lin.stride, lin.pads, lin.dilation)
        want = (sig.in_channels, sig.out_channels, sig.kernel, sig.stride, sig.pads, sig.dilation)
        assert got == want, c
        assert lin.groups == sig.groups, c
        lone += c.kept == (2,) and c.end - c.start > 1
    assert lone  # segments that keep only the dilated conv were priced (and checked)
    # ... and the merged graph really carries the dilated conv.
    merged = build_segments(model, {0: [(0, 3, (2,))]})
    (conv,) = [n for n in merged.graph.node if n.op_type == "Conv"]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["dilations"] == [2, 2] and attrs["kernel_shape"] == [3, 3]


def test_proto_with_dynamic_input_takes_input_shapes():
    """A ModelProto (Python API, Polygraphy loaders) gets --input-shape like a path does."""
    model = zoo.resnet(18, width=0.25, size=32)
    name = model.graph.input[0].name
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    shaped = api.load(model, {name: (1, 3, 32, 32)})
    assert shaped.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # not modified
    assert api.load(shaped, {name: (1, 3, 32, 32)}) is shaped  # nothing to change: no copy
    with pytest.raises(OnnxMergeError, match="conflicts"):
        api.load(model, {name: (1, 3, 64, 32)})
    with pytest.raises(OnnxMergeError, match="not graph inputs"):
        api.load(model, {"nope": (1, 3, 32, 32)})
    # a dynamic batch alone is taken as 1; with H dynamic too, the error names the flag and
    # the Python argument, with a shape to copy
    assert api.inspect(model)  # analyzed at batch 1
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(OnnxMergeError) as info:
        api.compress(model, 1.2)
    assert f"--input-shape {name}:1x3x224x32" in str(info.value)
    assert f"input_shapes={{{name!r}: (1, 3, 224, 32)}}" in str(info.value)


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with float16 weights, input and output (as an fp16 export is)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for t in half.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del half.graph.value_info[:]
    return half


def test_a_float16_model_fuses_within_half_precision_rounding() -> None:
    """A merged conv rounds its composed kernel to float16 once where its group rounded after
    each conv (rel ~5e-4): fuse refused every float16 model at the float32 tolerance."""
    model = _half(zoo.mobilenet_v2(width=0.25, size=32))
    fused, report = api.fuse(model)
    assert (
        report.merged_groups > 0
        and fused.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    )
    assert max(g.interior.max_rel for g in report.groups) > 1e-5  # rounding, not float32's
    assert report.max_rel < 5e-2
