"""Tests for onnxmerge.compose against an independent float64 reference conv (and ONNX Runtime).

The reference stack applies every conv, BatchNorm and residual Add as the original graph does;
the merged conv from compose.py must match it exactly (float64) in the fine-tune form
(padding relocated to each group's first conv, skips cropped) and in the interior in the
direct form (each conv keeps its own padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import (
    bn,
    dense,
    extent,
    fold_affine_input,
    fold_bn,
    geom,
    ref_lc,
    rel_err,
    relocate_padding,
    skip_crop,
    unpadded,
    window,
)

from onnxmerge.compose import (
    LinearConv,
    add_parallel,
    border_width,
    compose,
    identity,
    merge_segment,
    regroup,
    undilate,
)
from onnxmerge.geometry import merged_geometry

# ---------------------------------------------------------------- random chains


@dataclass
class Case:
    convs: list[LinearConv]  # raw weights, own (direct-form) pads
    bn_before: list  # BN params or None, applied to the input of conv j (main path only)
    bn_after: list
    residuals: list  # (a, b, shortcut LinearConv | None, shortcut BN | None)
    hw: tuple[int, int]
    later_zero: bool
    x: np.ndarray = field(repr=False, default=None)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def rand_bn(rng, c, scale_only=False):
    gamma, var = rng.uniform(0.5, 1.5, c), rng.uniform(0.2, 2.0, c)
    beta, mean = rng.normal(size=c), rng.normal(size=c)
    if scale_only:
        beta, mean = np.zeros(c), np.zeros(c)
    return (gamma, beta, mean, var, float(rng.choice([1e-5, 1e-3])))


@st.composite
def cases(draw, max_convs=5):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, max_convs))
    later_zero = draw(st.integers(0, 3)) == 0
    spans: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 3))):
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        crossing = any(a < c < b < d or c < a < d < b for c, d in spans)
        if not crossing and b not in [d for _, d in spans]:
            spans.append((a, b))
    ident = {sp for sp in spans if not later_zero and draw(st.booleans())}
    ch = [draw(st.integers(1, 6))]
    convs, bn_before, bn_after = [], [], []
    stride_prod = [1, 1]
    for j in range(n):
        cin = ch[j]
        forced = next((ch[a] for a, b in ident if b == j + 1), None)
        in_ident = any(a <= j < b for a, b in ident)
        kind = draw(st.sampled_from(["dense", "grouped", "dw", "dwmult"]))
        if forced is not None:
            cout = forced
            if kind == "dw" and cin == cout:
                g = cin
            elif kind == "grouped":
                g = draw(st.sampled_from(divisors(gcd(cin, cout))))
            else:
                g = 1
        elif kind == "dense":
            g, cout = 1, draw(st.integers(1, 6))
        elif kind == "grouped":
            g = draw(st.sampled_from(divisors(cin)))
            cout = g * draw(st.integers(1, max(1, 8 // g)))
        elif kind == "dw":
            g, cout = cin, cin
        else:
            g, cout = cin, cin * (2 if 2 * cin <= 8 else 1)
        k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        ext = [d[ax] * (k[ax] - 1) + 1 for ax in range(2)]
        if in_ident:
            s = (1, 1)
            top = [draw(st.integers(0, ext[ax] - 1)) for ax in range(2)]
            pads = (top[0], top[1], ext[0] - 1 - top[0], ext[1] - 1 - top[1])
        else:
            s = tuple(draw(st.integers(1, 2)) if stride_prod[ax] < 4 else 1 for ax in range(2))
            if later_zero and j > 0:
                pads = (0, 0, 0, 0)
            else:
                pads = tuple(draw(st.integers(0, ext[ax % 2] - 1)) for ax in range(4))
        stride_prod = [stride_prod[ax] * s[ax] for ax in range(2)]
        w = rng.normal(size=(cout, cin // g) + k) / np.sqrt(cin // g * k[0] * k[1])
        convs.append(LinearConv(w, rng.normal(size=cout), s, pads, d, g))
        bn_after.append(rand_bn(rng, cout) if draw(st.booleans()) else None)
        bn_before.append(j > 0 and draw(st.booleans()))
        ch.append(cout)
    hw = (draw(st.integers(9, 16)), draw(st.integers(9, 16)))
    size = hw
    for c in convs:
        size = c.out_hw(size)
        assume(min(size) >= 1)
    kk, _, ptot = geom(convs)
    assume(max(kk) <= 40)
    # BN before conv 0 is only exact without padding or with no shift (see fold_affine_input).
    bn_before[0] = draw(st.booleans())
    bn_before = [
        rand_bn(rng, ch[j], scale_only=(j == 0 and any(ptot))) if f else None
        for j, f in enumerate(bn_before)
    ]
    residuals = []
    for a, b in spans:
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = geom(convs[a:b])
        if (a, b) in ident:
            assert ch[a] == ch[b] and (sh, sw) == (1, 1) and pt + pb == kh - 1 and pl + pr == kw - 1
            residuals.append((a, b, None, None))
            continue
        kern, dil, spads = [], [], [0, 0, 0, 0]
        for ax, (K, P0, P1) in enumerate([(kh, pt, pb), (kw, pl, pr)]):
            slack = P0 + P1 - K  # the shortcut must have the same (pads - extent) per axis
            lo = max(1, -slack)
            e = draw(st.integers(lo, min(K, lo + 4)))
            dd = 2 if e >= 3 and e % 2 == 1 and draw(st.booleans()) else 1
            kern.append((e - 1) // dd + 1)
            dil.append(dd)
            tot = slack + e
            top = draw(st.integers(max(0, tot - P1), min(P0, tot)))
            spads[ax], spads[ax + 2] = top, tot - top
        g = draw(st.sampled_from(divisors(gcd(ch[a], ch[b]))))
        w = rng.normal(size=(ch[b], ch[a] // g, *kern)) / np.sqrt(ch[a] // g * kern[0] * kern[1])
        sc = LinearConv(w, rng.normal(size=ch[b]), (sh, sw), tuple(spads), tuple(dil), g)
        residuals.append((a, b, sc, rand_bn(rng, ch[b]) if draw(st.booleans()) else None))
    x = rng.normal(size=(ch[0],) + hw)
    return Case(convs, bn_before, bn_after, residuals, hw, later_zero, x)


def run_stack(case: Case, convs, crops=None):
    """Reference forward of the unmerged segment; crops[(a, b)] = skip offset (fine-tune form)."""
    pos = [case.x]
    for j, c in enumerate(convs):
        h = pos[j] if case.bn_before[j] is None else bn(pos[j], case.bn_before[j])
        y = ref_lc(h, c)
        if case.bn_after[j] is not None:
            y = bn(y, case.bn_after[j])
        for a, b, sc, sbn in case.residuals:
            if b != j + 1:
                continue
            src = pos[a]
            if crops is not None:
                top, left = crops[(a, b)]
                s = (1, 1) if sc is None else sc.stride
                ext = (1, 1) if sc is None else extent(sc)
                nh, nw = ((y.shape[1] - 1) * s[0] + ext[0], (y.shape[2] - 1) * s[1] + ext[1])
                src = window(src, top, left, nh, nw, allow_pad=(a == 0))
                sc = unpadded(sc)
            z = src if sc is None else ref_lc(src, sc)
            if sbn is not None:
                z = bn(z, sbn)
            y = y + z
        pos.append(y)
    return pos[-1]


def finetune_crops(case: Case):
    """Skip offsets computed by the test itself: extra rows at a, minus S*extra at b, minus pads."""
    n, crops = len(case.convs), {}
    for a, b, sc, _ in case.residuals:
        _, s, _ = geom(case.convs[a:b])
        _, _, xb = geom(case.convs[b:n])
        xa = geom(case.convs[a:n])[2] if a > 0 else [0, 0, 0, 0]
        sp = (0, 0, 0, 0) if sc is None else sc.pads
        crops[(a, b)] = (xa[0] - s[0] * xb[0] - sp[0], xa[1] - s[1] * xb[1] - sp[1])
    return crops


def folded(case: Case):
    """The segment as compose.py sees it: BNs folded, residuals in merge_segment's form."""
    convs = []
    for c, before, after in zip(case.convs, case.bn_before, case.bn_after, strict=True):
        if before is not None:
            gamma, beta, mean, var, eps = before
            scale = gamma / np.sqrt(var + eps)
            c = fold_affine_input(scale, beta - mean * scale, c)
        if after is not None:
            c = fold_bn(c, *after)
        convs.append(c)
    res = [(a, b, sc if sbn is None else fold_bn(sc, *sbn)) for a, b, sc, sbn in case.residuals]
    return convs, res


FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- property tests


@FAST
@given(cases())
def test_finetune_form_is_exact(case: Case) -> None:
    convs, res = folded(case)
    merged = merge_segment(convs, res)
    assert merged.dilation == (1, 1)
    reloc = relocate_padding(case.convs)
    _, _, ptot = geom(case.convs)
    assert reloc[0].pads == tuple(ptot) and all(c.pads == (0, 0, 0, 0) for c in reloc[1:])
    crops = finetune_crops(case)
    for a, b, sc, _ in case.residuals:
        assert skip_crop(case.convs, a, b, sc) == crops[(a, b)]
    want = run_stack(case, reloc, crops)
    got = ref_lc(case.x, merged)
    assert rel_err(got, want) <= 1e-9
    # Fusing the fine-tune graph itself (relocated convs, skips read at the crop offsets,
    # shortcut pads 0) gives the same conv.
    rconvs = relocate_padding(convs)
    rres = [(a, b, unpadded(sc), crops[(a, b)]) for a, b, sc in res]
    fused = merge_segment(rconvs, rres)
    assert fused.pads == merged.pads and fused.groups == merged.groups
    np.testing.assert_allclose(fused.weight, merged.weight, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fused.bias, merged.bias, rtol=0, atol=1e-12)


@FAST
@given(cases())
def test_direct_form_interior_exact(case: Case) -> None:
    convs, res = folded(case)
    merged = merge_segment(convs, res, in_hw=case.hw)
    want = run_stack(case, case.convs)
    got = ref_lc(case.x, merged)
    assert got.shape == want.shape  # same output grid as the original stack
    t, l, b, r = border_width(convs, res)
    if case.later_zero:
        assert (t, l, b, r) == (0, 0, 0, 0)
    h, w = want.shape[1:]
    inner = (slice(None), slice(t, max(t, h - b)), slice(l, max(l, w - r)))
    err = np.abs(got[inner] - want[inner]).max(initial=0.0)
    assert err <= 1e-9 * np.abs(want).max()
    if (t, l, b, r) == (0, 0, 0, 0):
        assert rel_err(got, want) <= 1e-9


@settings(max_examples=100, deadline=None)
@given(cases())
def test_merged_geometry_agrees(case: Case) -> None:
    cs = case.convs
    merged = merge_segment(cs)
    kern, stride, pads = merged_geometry(
        [c.kernel for c in cs],
        [c.stride for c in cs],
        [c.dilation for c in cs],
        [c.pads for c in cs],
    )
    assert (merged.kernel, merged.stride, merged.pads) == (kern, stride, pads)
    # Non-growing residuals (all generated ones) leave the geometry unchanged.
    convs, res = folded(case)
    withres = merge_segment(convs, res)
    assert (withres.kernel, withres.stride, withres.pads) == (kern, stride, pads)
    assert merged.out_hw(case.hw) == run_stack(case, cs).shape[1:]


# ---------------------------------------------------------------- ONNX Runtime


def _onnx_stack(case: Case, reloc, crops):
    """The fine-tune-form graph with onnx.helper: Conv/BatchNormalization/Pad/Slice/Add."""
    from onnx import helper, numpy_helper

    nodes, inits = [], []
    f32 = np.float32

    def const(name, arr, dtype=f32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def conv(inp, c, name):
        attrs = dict(
            strides=list(c.stride),
            pads=[c.pads[0], c.pads[1], c.pads[2], c.pads[3]],
            dilations=list(c.dilation),
            group=c.groups,
            kernel_shape=list(c.kernel),
        )
        ins = [inp, const(name + "_w", c.weight), const(name + "_b", c.bias)]
        nodes.append(helper.make_node("Conv", ins, [name], **attrs))
        return name

    def batchnorm(inp, p, name):
        gamma, beta, mean, var, eps = p
        ins = [inp] + [
            const(f"{name}_{k}", v) for k, v in zip("sbmv", (gamma, beta, mean, var), strict=True)
        ]
        nodes.append(helper.make_node("BatchNormalization", ins, [name], epsilon=eps))
        return name

    shapes = [case.x.shape[1:]]
    for c in reloc:
        shapes.append(c.out_hw(shapes[-1]))
    pos = ["x"]
    for j, c in enumerate(reloc):
        h = pos[j] if case.bn_before[j] is None else batchnorm(pos[j], case.bn_before[j], f"bnb{j}")
        y = conv(h, c, f"conv{j}")
        if case.bn_after[j] is not None:
            y = batchnorm(y, case.bn_after[j], f"bna{j}")
        for a, b, sc, sbn in case.residuals:
            if b != j + 1:
                continue
            top, left = crops[(a, b)]
            s = (1, 1) if sc is None else sc.stride
            ext = (1, 1) if sc is None else extent(sc)
            oh, ow = shapes[b]
            nh, nw = (oh - 1) * s[0] + ext[0], (ow - 1) * s[1] + ext[1]
            ih, iw = shapes[a]
            pt, pl = max(0, -top), max(0, -left)
            pb, pr = max(0, top + nh - ih), max(0, left + nw - iw)
            src = pos[a]
            if pt or pl or pb or pr:
                pads = const(f"pad{j}_p", [0, 0, pt, pl, 0, 0, pb, pr], np.int64)
                nodes.append(helper.make_node("Pad", [src, pads], [f"pad{j}"]))
                src = f"pad{j}"
            st_, en = [top + pt, left + pl], [top + pt + nh, left + pl + nw]
            ins = [
                src,
                const(f"sl{j}_s", st_, np.int64),
                const(f"sl{j}_e", en, np.int64),
                const(f"sl{j}_a", [2, 3], np.int64),
            ]
            nodes.append(helper.make_node("Slice", ins, [f"crop{j}"]))
            z = f"crop{j}"
            if sc is not None:
                z = conv(z, unpadded(sc), f"sc{j}")
                if sbn is not None:
                    z = batchnorm(z, sbn, f"scbn{j}")
            nodes.append(helper.make_node("Add", [y, z], [f"add{j}"]))
            y = f"add{j}"
        pos.append(y)
    nodes.append(helper.make_node("Identity", [pos[-1]], ["y"]))
    return _model(nodes, inits, case)


def _model(nodes, inits, case):
    from onnx import TensorProto, checker, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *case.x.shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None, None])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    return model


def _run(model, x):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x[None].astype(np.float32)})[0][0]


@settings(max_examples=20, deadline=None)
@given(cases(max_convs=4))
def test_onnxruntime_finetune_graph_matches_merged_conv(case: Case) -> None:
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    convs, res = folded(case)
    merged = merge_segment(convs, res)
    crops = finetune_crops(case)
    want = _run(_onnx_stack(case, relocate_padding(case.convs), crops), case.x)
    inits = [
        numpy_helper.from_array(merged.weight.astype(np.float32), "w"),
        numpy_helper.from_array(merged.bias.astype(np.float32), "b"),
    ]
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        strides=list(merged.stride),
        pads=list(merged.pads),
        group=merged.groups,
        kernel_shape=list(merged.kernel),
    )
    got = _run(_model([node], inits, case), case.x)
    assert rel_err(got.astype(np.float64), want.astype(np.float64)) <= 1e-5


# ---------------------------------------------------------------- unit tests


def _rand(rng, o, i, k, g=1, **kw):
    return LinearConv(rng.normal(size=(o, i // g, *k)), rng.normal(size=o), groups=g, **kw)


def test_depthwise_chain_stays_depthwise_and_dense_densifies() -> None:
    rng = np.random.default_rng(0)
    dw1, dw2 = (
        _rand(rng, 5, 5, (3, 3), 5, pads=(1, 1, 1, 1)),
        _rand(rng, 5, 5, (3, 3), 5, pads=(1, 1, 1, 1)),
    )
    m = merge_segment([dw1, dw2])
    assert m.groups == 5 and m.weight.shape == (5, 1, 5, 5)
    assert compose(dw1, dw2).groups == 5
    pw = _rand(rng, 7, 5, (1, 1))
    m2 = merge_segment([dw1, pw])
    assert m2.groups == 1 and m2.weight.shape == (7, 5, 3, 3)
    mult = _rand(rng, 10, 5, (3, 3), 5)  # depthwise multiplier 2
    m3 = merge_segment([dw1, mult])
    assert m3.groups == 5 and m3.weight.shape == (10, 1, 5, 5)


def test_regroup_finds_block_diagonal_structure() -> None:
    rng = np.random.default_rng(1)
    g3 = _rand(rng, 6, 9, (2, 3), 3)
    back = regroup(dense(g3))
    assert back.groups == 3
    np.testing.assert_array_equal(back.weight, g3.weight)
    assert regroup(_rand(rng, 4, 4, (3, 3))).groups == 1
    ident = dense(identity(4))
    np.testing.assert_array_equal(ident.weight[:, :, 0, 0], np.eye(4))
    assert regroup(ident).groups == 4


def test_add_parallel_rejects_mismatched_strides_and_channels() -> None:
    rng = np.random.default_rng(2)
    main = _rand(rng, 4, 4, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
    with pytest.raises(ValueError):
        add_parallel(main, _rand(rng, 4, 4, (1, 1)))
    with pytest.raises(ValueError):
        add_parallel(main, _rand(rng, 5, 4, (1, 1), stride=(2, 2)))
    with pytest.raises(ValueError):
        merge_segment([_rand(rng, 4, 4, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1))], [(0, 1, None)])
    with pytest.raises(ValueError):  # identity across a channel change
        merge_segment([_rand(rng, 4, 3, (1, 1))], [(0, 1, None)])
    with pytest.raises(ValueError):  # crossing residuals
        merge_segment([_rand(rng, 4, 4, (1, 1))] * 3, [(0, 2, None), (1, 3, None)])


def test_add_parallel_downsample_and_tf_same_padding() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 10, 12))
    main = _rand(rng, 6, 3, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
    short = _rand(rng, 6, 3, (1, 1), stride=(2, 2))
    m = add_parallel(main, short, in_hw=(10, 12))
    assert m.kernel == (3, 3)
    assert rel_err(ref_lc(x, m), ref_lc(x, main) + ref_lc(x, short)) <= 1e-12
    # SAME_UPPER-style asymmetric pads: grids agree on even sizes only.
    tf = _rand(rng, 6, 3, (3, 3), stride=(2, 2), pads=(0, 0, 1, 1))
    m = add_parallel(tf, short, in_hw=(10, 12))
    assert rel_err(ref_lc(x, m), ref_lc(x, tf) + ref_lc(x, short)) <= 1e-12
    with pytest.raises(ValueError):
        add_parallel(tf, short, in_hw=(9, 9))


def test_add_parallel_grows_main_window_exactly() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 9))
    main = _rand(rng, 3, 2, (1, 1))
    wide = _rand(rng, 3, 2, (3, 3), pads=(1, 1, 1, 1), dilation=(1, 1))
    m = add_parallel(main, wide)
    assert m.kernel == (3, 3) and m.pads == (1, 1, 1, 1)
    assert rel_err(ref_lc(x, m), ref_lc(x, main) + ref_lc(x, wide)) <= 1e-12


def test_identity_residual_lands_on_pad_tap() -> None:
    rng = np.random.default_rng(5)
    c = LinearConv(np.zeros((2, 2, 3, 2)), np.zeros(2), pads=(2, 0, 0, 1))
    m = merge_segment([c], [(0, 1, None)])
    want = np.zeros((2, 2, 3, 2))
    want[[0, 1], [0, 1], 2, 0] = 1.0
    np.testing.assert_array_equal(dense(m).weight, want)
    x = rng.normal(size=(2, 7, 8))
    assert rel_err(ref_lc(x, m), x) <= 1e-15


def test_nested_residuals_example() -> None:
    """An inverted-residual block inside a longer residual, shortcut with stride, all folded."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 12, 11))
    convs = [
        _rand(rng, 8, 4, (1, 1)),
        _rand(rng, 8, 8, (3, 3), 8, pads=(1, 1, 1, 1)),
        _rand(rng, 4, 8, (1, 1)),
        _rand(rng, 6, 4, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1)),
    ]
    short = _rand(rng, 6, 4, (1, 1), stride=(2, 2))
    res = [(0, 3, None), (0, 4, short)]
    reloc = relocate_padding(convs)
    h1 = ref_lc(x, reloc[0])
    h3 = ref_lc(ref_lc(h1, reloc[1]), reloc[2])
    top, left = skip_crop(convs, 0, 3)
    h3 = h3 + window(x, top, left, *h3.shape[1:], allow_pad=True)
    y = ref_lc(h3, reloc[3])
    top, left = skip_crop(convs, 0, 4, short)
    nh, nw = (y.shape[1] - 1) * 2 + 1, (y.shape[2] - 1) * 2 + 1
    y = y + ref_lc(window(x, top, left, nh, nw, allow_pad=True), unpadded(short))
    merged = merge_segment(convs, res)
    assert merged.kernel == (5, 5) and merged.stride == (2, 2) and merged.pads == (2, 2, 2, 2)
    assert rel_err(ref_lc(x, merged), y) <= 1e-10


def test_fold_affine_input_exact_without_pads() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 9, 9))
    c = _rand(rng, 6, 4, (3, 3), 2)
    scale, shift = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    f = fold_affine_input(scale, shift, c)
    assert (
        rel_err(ref_lc(x, f), ref_lc(x * scale[:, None, None] + shift[:, None, None], c)) <= 1e-12
    )


def test_undilate_and_dense_are_equivalent_convs() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 13, 12))
    c = _rand(rng, 4, 6, (3, 2), 2, stride=(2, 1), pads=(1, 0, 2, 1), dilation=(2, 3))
    u = undilate(c)
    assert u.dilation == (1, 1) and u.kernel == (5, 4)
    assert rel_err(ref_lc(x, u), ref_lc(x, c)) <= 1e-13
    assert rel_err(ref_lc(x, dense(c)), ref_lc(x, c)) <= 1e-13


def test_border_width_same_padded_pair() -> None:
    rng = np.random.default_rng(7)
    a = _rand(rng, 3, 3, (3, 3), pads=(1, 1, 1, 1))
    b = _rand(rng, 3, 3, (3, 3), pads=(1, 1, 1, 1))
    assert border_width([a, b]) == (1, 1, 1, 1)
    assert border_width(relocate_padding([a, b])) == (0, 0, 0, 0)
    s2 = _rand(rng, 3, 3, (5, 5), stride=(2, 2), pads=(2, 2, 2, 2))
    assert border_width([a, s2]) == (1, 1, 1, 1)
    assert border_width([a, b, s2]) == (2, 2, 2, 2)
