"""Calibration inputs: image folders, .npz files, the built-in photos, and bad sources."""

from __future__ import annotations

import numpy as np
import pytest

from onnxmerge import zoo
from onnxmerge.calib_data import calibration_inputs, describe
from onnxmerge.errors import OnnxMergeError

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def model():
    return zoo.resnet(18, width=0.25, size=48)


def _inputs(feeds):
    return np.concatenate([next(iter(f.values())) for f in feeds])


def test_folder_of_images_gives_normalized_centre_crops(model, tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(60, 90), (120, 70), (48, 48)]):
        PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = _inputs(calibration_inputs(model, tmp_path, count=5))
    assert x.shape == (5, 3, 48, 48) and x.dtype == np.float32
    # uniform noise in [0, 255] normalized with the ImageNet statistics
    assert -2.2 < x.min() < -1.5 and 2.0 < x.max() < 2.7
    # beyond the 3 images come their mirrors
    np.testing.assert_array_equal(x[3], x[0][:, :, ::-1])


def test_npz_is_used_in_order(model, tmp_path):
    arr = np.random.default_rng(1).standard_normal((4, 3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "c.npz", a=arr)
    x = _inputs(calibration_inputs(model, tmp_path / "c.npz", count=3))
    np.testing.assert_array_equal(x, arr[:3])


@pytest.mark.parametrize("kind", ["empty-folder", "bad-npz", "wrong-suffix", "broken-image"])
def test_bad_sources_are_one_clear_error(model, tmp_path, kind):
    if kind == "empty-folder":
        src = tmp_path
    elif kind == "bad-npz":
        src = tmp_path / "c.npz"
        np.savez(src, a=np.zeros((2, 5)))
    elif kind == "wrong-suffix":
        src = tmp_path / "c.txt"
        src.write_text("x")
    else:
        (tmp_path / "x.png").write_bytes(b"not a png")
        src = tmp_path
    with pytest.raises(OnnxMergeError, match="--calib"):
        calibration_inputs(model, src)


def test_default_is_the_builtin_photos_when_available(model):
    pytest.importorskip("skimage")
    x = _inputs(calibration_inputs(model, None, count=16))
    assert x.shape == (16, 3, 48, 48)
    assert len({a.tobytes() for a in x}) == 16  # all distinct views
    assert "natural photos" in describe(None, model)
