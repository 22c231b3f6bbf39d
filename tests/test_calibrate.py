"""Calibrated merge (onnxmerge.calibrate): the least-squares refit of one conv.

Checked against an independent float64 numpy conv (tests/test_compose.ref_conv): a target that
IS a conv of the input is recovered; the fit never raises the calibration error; the refit
conv keeps the geometry; an over-sized fit is refused, not attempted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import ref_lc

from onnxmerge.calibration.fit import fit_conv, patches
from onnxmerge.compose import LinearConv


@st.composite
def convs(draw):
    g = draw(st.sampled_from([1, 2, 4]))
    cin = g * draw(st.integers(1, 3))
    cout = g * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((cout, cin // g, kh, kw))
    b = rng.standard_normal(cout)
    return LinearConv(w, b, stride, pads, dil, g), rng


def _apply(lin: LinearConv, x: np.ndarray) -> np.ndarray:
    """The independent reference on a batch (N, C, H, W)."""
    return np.stack([ref_lc(im, lin) for im in x])


@settings(max_examples=60, deadline=None)
@given(convs())
def test_patches_times_weight_is_the_conv(case):
    lin, rng = case
    x = rng.standard_normal((lin.in_channels, 9, 8))
    p = patches(lin, x)  # (pixels, g, k)
    g, og = lin.groups, lin.out_channels // lin.groups
    w = lin.weight.reshape(g, og, -1)
    y = np.einsum("rgk,gok->gor", p, w).reshape(lin.out_channels, -1) + lin.bias[:, None]
    ref = _apply(lin, x[None])[0]
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(convs())
def test_recovers_a_linear_target_from_a_wrong_start(case):
    true, rng = case
    x = rng.standard_normal((3, true.in_channels, 10, 9))
    y = _apply(true, x)
    start = LinearConv(
        true.weight + rng.standard_normal(true.weight.shape),
        np.zeros_like(true.bias),
        true.stride,
        true.pads,
        true.dilation,
        true.groups,
    )
    fit = fit_conv(start, x, y, ridge=1e-9, rows_per_unknown=0)
    assert fit.conv is not None
    assert fit.error_after <= 1e-6  # patches are stored in float32
    # Only taps that read real (not padded) pixels are identifiable; compare outputs instead.
    np.testing.assert_allclose(_apply(fit.conv, x), y, rtol=1e-5, atol=1e-5)
    assert fit.conv.stride == true.stride and fit.conv.pads == true.pads
    assert fit.conv.weight.shape == true.weight.shape


@settings(max_examples=40, deadline=None)
@given(convs(), st.floats(1e-4, 1.0))
def test_refit_never_raises_calibration_error(case, ridge):
    lin, rng = case
    x = rng.standard_normal((2, lin.in_channels, 8, 8))
    y = np.maximum(_apply(lin, x), 0)  # a non-linear target
    assume(np.sum(y**2) > 1e-9)  # relative errors need a target with some energy
    fit = fit_conv(lin, x, y, ridge=ridge, rows_per_unknown=0)
    assert fit.error_after <= fit.error_before + 1e-7
    out = _apply(fit.conv, x)
    measured = np.sum((out - y) ** 2) / np.sum(y**2)
    np.testing.assert_allclose(measured, fit.error_after, rtol=1e-4, atol=1e-7)


def test_subsampled_rows_still_fit_a_linear_target():
    rng = np.random.default_rng(1)
    true = LinearConv(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), pads=(1, 1, 1, 1))
    x = rng.standard_normal((2, 3, 16, 16))
    fit = fit_conv(
        LinearConv(np.zeros((4, 3, 3, 3)), np.zeros(4), pads=(1, 1, 1, 1)),
        x,
        _apply(true, x),
        ridge=1e-9,
        max_rows=60,
    )
    assert fit.rows == 60
    np.testing.assert_allclose(fit.conv.weight, true.weight, atol=1e-6)


def test_too_many_unknowns_is_refused():
    lin = LinearConv(np.zeros((2, 64, 7, 7)), np.zeros(2))
    fit = fit_conv(lin, np.zeros((1, 64, 7, 7)), np.zeros((1, 2, 1, 1)), max_unknowns=3000)
    assert fit.conv is None and "3137" in fit.reason


def test_too_few_pixels_per_unknown_is_refused():
    # 3x3 conv from 16 channels: 145 unknowns; one 8x8 image gives 64 output pixels
    lin = LinearConv(np.zeros((4, 16, 3, 3)), np.zeros(4), pads=(1, 1, 1, 1))
    fit = fit_conv(lin, np.zeros((1, 16, 8, 8)), np.zeros((1, 4, 8, 8)))
    assert fit.conv is None and "pixels" in fit.reason
    fit = fit_conv(lin, np.ones((5, 16, 8, 8)), np.ones((5, 4, 8, 8)))  # 320 >= 2 x 145
    assert fit.conv is not None


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), noise=st.floats(0.1, 1.0))
def test_a_1d_conv_is_refit_and_written_back_as_1d(seed, noise):
    """refit_merged on 1-D convs (fit in their height-1 2-D form): the weights written back
    are 1-D again, and ONNX Runtime running the refit model gives the error the fit reported
    (relative SSE to the original's tensor), below the perturbed start's."""
    import onnx
    from graphs import conv1d
    from onnx import numpy_helper

    from onnxmerge.calibration.network import refit_merged
    from onnxmerge.runtime import run

    original = conv1d(length=64, seed=seed % 7)
    merged = onnx.ModelProto()
    merged.CopyFrom(original)
    rng = np.random.default_rng(seed)
    for t in merged.graph.initializer:
        if t.name in ("w2", "w3"):
            w = numpy_helper.to_array(t)
            t.CopyFrom(
                numpy_helper.from_array(
                    w + noise * rng.standard_normal(w.shape).astype(w.dtype), t.name
                )
            )
    feeds = [{"x": rng.standard_normal((1, 3, 64)).astype(np.float32)} for _ in range(8)]
    model, reports = refit_merged(original, merged, {"c2", "c3"}, feeds, {"ridge": 1e-6})
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    assert dims["w2"] == [4, 4, 3] and dims["w3"] == [4, 8, 1]
    for name, out in (("c2", "y"), ("c3", "z")):
        ref = np.concatenate([run(original, f)[out] for f in feeds]).astype(np.float64)
        got = np.concatenate([run(model, f)[out] for f in feeds]).astype(np.float64)
        report = next(r for r in reports if r.name == name)
        assert report.fitted and report.error_after < report.error_before
        measured = np.sum((got - ref) ** 2) / np.sum(ref**2)
        assert measured == pytest.approx(report.error_after, rel=1e-3, abs=1e-6)
