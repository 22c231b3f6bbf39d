"""Images prepared as the model expects (calibration.preprocess): Keras' scaling modes, BGR,
`--mean`/`--std`, and NHWC inputs (tf2onnx's Keras exports) fed the same photos as NCHW."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxmerge import api, photos, zoo
from onnxmerge.calibration.data import calibration_set, read_inputs
from onnxmerge.calibration.preprocess import (
    MODES,
    Preprocess,
    channels_last,
    image_hw,
    photo,
    preprocess_from,
)
from onnxmerge.errors import OnnxMergeError
from onnxmerge.runtime import session

PIL = pytest.importorskip("PIL.Image")


def keras_preprocess_input(x: np.ndarray, mode: str) -> np.ndarray:
    """Keras' imagenet_utils.preprocess_input on H x W x 3 RGB pixels 0..255, written from
    its documentation (not our code): the reference the modes are checked against."""
    x = x.astype(np.float64)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    if mode == "caffe":
        return x[..., ::-1] - [103.939, 116.779, 123.68]
    return x  # raw: the network rescales itself


@settings(max_examples=30, deadline=None)
@given(
    pixels=hnp.arrays(np.uint8, (4, 5, 3)),
    mode=st.sampled_from(sorted(MODES)),
)
def test_modes_equal_keras_preprocess_input(pixels, mode):
    got = MODES[mode].normalize(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
    want = keras_preprocess_input(pixels, mode).transpose(2, 0, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    mean=st.lists(st.floats(-300, 300), min_size=3, max_size=3),
    std=st.lists(st.floats(0.5, 300), min_size=3, max_size=3),
    bgr=st.booleans(),
)
def test_mean_std_override_and_the_plan_record_round_trip(mean, std, bgr):
    base = MODES["caffe" if bgr else "torch"]
    pre = preprocess_from(base, ",".join(map(str, mean)), ",".join(map(str, std)))
    assert pre.mean == pytest.approx(mean) and pre.std == pytest.approx(std) and pre.bgr == bgr
    assert preprocess_from(json.loads(json.dumps(pre.record()))) == pre
    x = np.random.default_rng(0).random((3, 2, 2)).astype(np.float32)
    order = x[::-1] if bgr else x
    want = (order * 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(pre.normalize(x), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "mode, mean, std, words",
    [
        ("keras", None, None, "--preprocess keras"),
        (None, "1,2", None, "--mean 1,2"),
        (None, "a,b,c", None, "--mean a,b,c"),
        (None, None, "0", "--std 0"),
        (None, None, "-1,1,1", "--std -1,1,1"),
        (None, None, "1,nan,1", "--std 1,nan,1"),
    ],
)
def test_bad_values_are_one_clear_error(mode, mean, std, words):
    with pytest.raises(OnnxMergeError, match=words):
        preprocess_from(mode, mean, std)


def test_one_value_for_every_channel_and_the_names():
    assert preprocess_from("raw", "127.5", "127.5") == MODES["tf"]
    assert MODES["tf"].text() == '"tf"'
    assert "BGR" in Preprocess((1, 2, 3), (1, 1, 1), bgr=True).text()


@pytest.mark.parametrize(
    "sample, last, hw",
    [((3, 8, 9), False, (8, 9)), ((8, 9, 3), True, (8, 9)), ((3, 8, 3), False, (8, 3)),
     ((5, 8, 9), None, (8, 9)), ((3, 8), None, None)],
)  # fmt: skip
def test_layout_read_from_the_shape(sample, last, hw):
    assert channels_last(sample) is last
    if hw is not None:
        assert image_hw(sample) == hw


def nhwc(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (one N x C x H x W input) behind a Transpose from N x H x W x C, as tf2onnx
    writes Keras models."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = m.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    new = onnx.helper.make_tensor_value_info(
        "nhwc_input", inp.type.tensor_type.elem_type, [dims[0], dims[2], dims[3], dims[1]]
    )
    t = onnx.helper.make_node("Transpose", ["nhwc_input"], [inp.name], perm=[0, 3, 1, 2])
    m.graph.node.insert(0, t)
    m.graph.input.remove(inp)
    m.graph.input.insert(0, new)
    return m


@pytest.fixture(scope="module")
def pair():
    base = zoo.resnet(18, width=0.25, size=32)
    return base, nhwc(base)


def _images(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        PIL.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_nhwc_model_gets_the_nchw_models_images_transposed(pair, tmp_path, mode):
    """A folder, and the built-in photos: the NHWC export is fed what the NCHW one is, laid
    out as its input is, and both compute the same outputs on them."""
    base, last = pair
    pre = MODES[mode]
    sources = [_images(tmp_path / "imgs")] + ([None] if photos.available(colour_only=True) else [])
    for source in sources:
        a = read_inputs(base, source, 4, 0, pre).feeds
        b = read_inputs(last, source, 4, 0, pre).feeds
        assert len(a) == len(b) == 4
        for fa, fb in zip(a, b, strict=True):
            np.testing.assert_array_equal(fa["input"].transpose(0, 2, 3, 1), fb["nhwc_input"])
        out = base.graph.output[0].name
        ya = session(base).run([out], a[0])[0]
        np.testing.assert_allclose(session(last).run([out], b[0])[0], ya, rtol=1e-4, atol=1e-5)


def test_nhwc_without_photos_gets_random_fields_in_its_layout(pair, monkeypatch):
    _, last = pair
    monkeypatch.setattr(photos, "available", lambda colour_only=False: [])
    (feed, *_) = calibration_set(last, None, 4).feeds
    assert feed["nhwc_input"].shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_compress_an_nhwc_export_with_a_mode_records_and_rebuilds_it(pair, tmp_path, macs_backend):
    """The calibration line names the photos and the mode, the plan records it, and
    --from-plan (no flag) calibrates as the plan did: the same refit, the same network."""
    if not photos.available(colour_only=True):
        pytest.skip("needs the built-in photos")
    _, last = pair
    common = {"cache_dir": tmp_path, "progress": False, "backend": macs_backend}
    res = api.compress(last, 1.3, kind="width", calib_count=6, preprocess="tf", **common)
    assert any("photos" in line and 'preprocessing "tf"' in line for line in res.log)
    assert preprocess_from(res.plan.calibration["preprocess"]) == MODES["tf"]
    again = api.from_plan(last, res.plan, calib_count=6, backend=macs_backend)
    out = last.graph.output[0].name
    feed = read_inputs(last, None, 1, 5, MODES["tf"]).feeds[0]
    ya = session(res.model).run([out], feed)[0]
    np.testing.assert_allclose(session(again.model).run([out], feed)[0], ya, rtol=1e-5, atol=1e-6)
    other = api.from_plan(last, res.plan, calib_count=6, backend=macs_backend, preprocess="torch")
    assert not np.allclose(session(other.model).run([out], feed)[0], ya, rtol=1e-5, atol=1e-6)


def test_distillation_views_of_an_nhwc_model_are_the_nchw_views_permuted(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxmerge.augment import Views, load_sources

    folder = _images(tmp_path / "imgs", 4)
    a = load_sources([folder], (3, 24, 24), MODES["caffe"])
    b = load_sources([folder], (24, 24, 3), MODES["caffe"])
    xa = Views(a, (24, 24), seed=2).batch([0, 1, 2, 3])
    xb = Views(b, (24, 24), seed=2).batch([0, 1, 2, 3])
    assert tuple(xb.shape) == (4, 24, 24, 3)
    torch.testing.assert_close(xa.permute(0, 2, 3, 1), xb)
    arr = np.random.default_rng(0).standard_normal((5, 24, 24, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=arr)
    c = load_sources([tmp_path / "d.npz"], (24, 24, 3))
    centre = Views(c, (24, 24)).batch([0], augment=False)
    np.testing.assert_allclose(centre.numpy()[0], arr[0], rtol=1e-5, atol=1e-5)


def test_cli_flags_reach_the_calibration_and_bad_ones_exit_2(run_cli, tmp_path, pair):
    base, _ = pair
    src = tmp_path / "m.onnx"
    onnx.save(base, src)
    for flags, words in ((["--mean", "1,2"], "--mean 1,2"), (["--std", "0"], "--std 0")):
        got = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", *flags)
        assert got.rc == 2 and len(got.stderr_lines) == 1 and words in got.stderr
        assert not (tmp_path / "o.onnx").exists()
    got = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", "--preprocess", "keras")
    assert got.rc == 2 and "--preprocess" in got.stderr


def test_finetune_prepares_images_as_the_students_plan_says(tmp_path, pair, macs_backend):
    """`finetune` without --preprocess: the --plan's mode, else the plan written beside the
    student, else "torch" (a missing or broken plan counts as none)."""
    if not photos.available(colour_only=True):
        pytest.skip("needs the built-in photos")
    _, last = pair
    res = api.compress(last, 1.3, kind="width", calib_count=6, preprocess="caffe",
                       progress=False, backend=macs_backend, cache_dir=tmp_path)  # fmt: skip
    api.write_result(res, tmp_path / "out.onnx")
    assert api.plan_preprocess(None, tmp_path / "out.onnx") == MODES["caffe"]
    assert api.plan_preprocess(tmp_path / "out.plan.json") == MODES["caffe"]
    (tmp_path / "bad.plan.json").write_text("{")
    assert api.plan_preprocess(tmp_path / "bad.plan.json") == MODES["torch"]
    assert api.plan_preprocess(None, tmp_path / "elsewhere.onnx") == MODES["torch"]


def test_an_nhwc_input_with_the_default_scaling_gets_a_hint(pair, tmp_path):
    from onnxmerge.calibration.data import describe

    base, last = pair
    folder = _images(tmp_path / "imgs")
    assert "Keras" in describe([folder], last, 3)
    assert "Keras" not in describe([folder], last, 3, MODES["tf"])
    assert "Keras" not in describe([folder], base, 3)


def gray_model(size: int = 24, last: bool = False) -> onnx.ModelProto:
    """Conv 1 -> 4 over a 1-channel image (N x 1 x H x W, or N x H x W x 1 behind a
    Transpose)."""
    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, size, size])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, size, size])
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    g = onnx.helper.make_graph([conv], "g", [x], [y], [onnx.numpy_helper.from_array(w, "w")])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return nhwc(m) if last else m


def test_a_gray_model_gets_the_luma_of_images_as_pil_computes_it(tmp_path):
    """N x 1 x H x W (and N x H x W x 1): a folder's images as PIL's "L" of the same crop,
    scaled with the mean of the mode's three means and stds; before, refused."""
    folder = _images(tmp_path / "imgs")
    pre = MODES["torch"]
    feeds = read_inputs(gray_model(), [folder], 3, 0, pre).feeds
    last = read_inputs(gray_model(last=True), [folder], 3, 0, pre).feeds
    for i, (f, g) in enumerate(zip(feeds, last, strict=True)):
        assert f["x"].shape == (1, 1, 24, 24)
        np.testing.assert_array_equal(f["x"].transpose(0, 2, 3, 1), g["nhwc_input"])
        with PIL.open(folder / f"{i}.png") as im:  # the crop photo() takes, then PIL's luma
            rgb = np.asarray(im.convert("RGB"))
        crop = photo(rgb, (24, 24), MODES["raw"])  # raw pixels, 3 x H x W
        luma = np.asarray(
            PIL.fromarray(crop.transpose(1, 2, 0).round().astype(np.uint8)).convert("L")
        )
        want = (luma - np.mean(pre.mean)) / np.mean(pre.std)
        np.testing.assert_allclose(f["x"][0, 0], want, atol=1.01 / np.mean(pre.std))
    if photos.available(colour_only=True):
        (one, *_) = read_inputs(gray_model(), None, 2, 0, pre).feeds
        assert one["x"].shape == (1, 1, 24, 24) and one["x"].std() > 0.1  # photos, not fields


def test_distillation_views_of_a_gray_model_are_the_luma_of_the_colour_views(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxmerge.augment import Views, load_sources

    folder = _images(tmp_path / "imgs", 3)
    raw = MODES["raw"]
    colour = Views(load_sources([folder], (3, 16, 16), raw), (16, 16), seed=4).batch([0, 1, 2])
    gray = Views(load_sources([folder], (1, 16, 16), raw), (16, 16), seed=4).batch([0, 1, 2])
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(gray, (colour * w).sum(1, keepdim=True), rtol=1e-5, atol=1e-3)
