"""Calibration inputs: image folders, .npz files, the built-in photos, and bad sources."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.calibration.data import calibration_inputs, calibration_set, describe, spread
from onnxmerge.errors import OnnxMergeError
from onnxmerge.importance import holdout_split

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
    # beyond the 3 images come their mirrors, in the same group as the photo
    np.testing.assert_array_equal(x[3], x[0][:, :, ::-1])
    assert calibration_set(model, tmp_path, count=5).groups == [0, 1, 2, 0, 1]


def test_npz_is_used_in_order(model, tmp_path):
    arr = np.random.default_rng(1).standard_normal((4, 3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "c.npz", a=arr)
    x = _inputs(calibration_inputs(model, tmp_path / "c.npz", count=3))
    np.testing.assert_array_equal(x, arr[:3])
    assert calibration_set(model, tmp_path / "c.npz", count=3).groups == [0, 1, 2]
    np.savez(tmp_path / "g.npz", a=arr, groups=np.array([7, 7, 3, 3]))  # `groups` is no input
    cs = calibration_set(model, tmp_path / "g.npz", count=3)
    np.testing.assert_array_equal(_inputs(cs.feeds), arr[:3])
    assert cs.groups == [7, 7, 3]


def test_several_folders_pool_and_several_npz_concatenate(model, tmp_path):
    rng = np.random.default_rng(2)
    for d, n in (("a", 2), ("b", 1)):
        (tmp_path / d).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
            PIL.fromarray(img).save(tmp_path / d / f"{i}.png")
    cs = calibration_set(model, [tmp_path / "a", tmp_path / "b"], count=6)
    assert len(cs.feeds) == 6 and cs.groups == [0, 1, 2, 0, 1, 2]  # 3 photos, then mirrors
    arr = rng.standard_normal((3, 3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "g.npz", a=arr[:2], groups=np.array([5, 5]))
    np.savez(tmp_path / "n.npz", a=arr[2:])
    cs = calibration_set(model, [tmp_path / "g.npz", tmp_path / "n.npz"], count=8)
    np.testing.assert_array_equal(_inputs(cs.feeds), arr)
    assert cs.groups == [5, 5, 6]  # the second file's arrays are their own sources
    with pytest.raises(OnnxMergeError, match="not both"):
        calibration_set(model, [tmp_path / "a", tmp_path / "n.npz"])
    assert "a, " in describe([tmp_path / "a", tmp_path / "b"], model, 6)


def test_fewer_inputs_than_images_take_from_every_folder_and_file(model, tmp_path):
    """A count below the pool spreads over it: a second folder (or .npz) is not ignored
    because the first one alone holds `count` images."""
    rng = np.random.default_rng(3)
    for d, n in (("a", 6), ("b", 2)):
        (tmp_path / d).mkdir()
        for i in range(n):
            PIL.fromarray(np.full((50, 60, 3), 30 * i + (d == "b") * 200, np.uint8)).save(
                tmp_path / d / f"{i}.png"
            )
    x = _inputs(calibration_inputs(model, [tmp_path / "a", tmp_path / "b"], count=4))
    assert len(x) == 4 and len({a.tobytes() for a in x}) == 4
    assert x[-1].mean() > 1.0  # a bright image of folder b (a's are dark)
    arr = rng.standard_normal((8, 3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "g.npz", a=arr[:6], groups=np.arange(6) // 2)
    np.savez(tmp_path / "n.npz", a=arr[6:])
    cs = calibration_set(model, [tmp_path / "g.npz", tmp_path / "n.npz"], count=4)
    np.testing.assert_array_equal(_inputs(cs.feeds), arr[[0, 2, 4, 6]])
    assert cs.groups == [0, 1, 2, 3]


@given(st.integers(0, 200), st.integers(1, 64))
def test_spread_takes_distinct_evenly_spaced_items(n, count):
    picked = spread(n, count)
    assert len(picked) == min(n, count) and picked == sorted(set(picked))
    assert all(0 <= i < n for i in picked) and (not picked or picked[0] == 0)
    gaps = np.diff([*picked, n]) if picked else np.array([])
    assert all(g <= -(-n // count) for g in gaps)  # no gap wider than ceil(n / count)


@pytest.mark.parametrize(
    "kind",
    ["empty-folder", "bad-npz", "bad-groups", "wrong-suffix", "broken-image", "one-array"],
)
def test_bad_sources_are_one_clear_error(model, tmp_path, kind):
    if kind == "empty-folder":
        src = tmp_path
    elif kind == "bad-npz":
        src = tmp_path / "c.npz"
        np.savez(src, a=np.zeros((2, 5)))
    elif kind == "bad-groups":
        src = tmp_path / "c.npz"
        np.savez(src, a=np.zeros((2, 3, 48, 48)), groups=np.array([0.5, 1.5]))
    elif kind == "one-array":  # nothing left to score a fit on
        src = tmp_path / "c.npz"
        np.savez(src, a=np.zeros((1, 3, 48, 48), np.float32))
    elif kind == "wrong-suffix":
        src = tmp_path / "c.txt"
        src.write_text("x")
    else:
        (tmp_path / "x.png").write_bytes(b"not a png")
        src = tmp_path
    with pytest.raises(OnnxMergeError, match="--calib"):
        calibration_inputs(model, src)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_inputs_is_one_clear_error(model, count):
    with pytest.raises(OnnxMergeError, match="at least 2 inputs.*--calib-count"):
        calibration_set(model, None, count=count)


def test_cli_calib_count_below_two_is_one_line_and_no_output(model, run_cli, tmp_path):
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    r = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", "--calib-count", "1")
    assert r.rc == 2 and r.stderr.count("\n") == 1 and "at least 2 inputs" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_default_is_the_builtin_photos_when_available(model):
    pytest.importorskip("skimage")

    x = _inputs(calibration_inputs(model, None, count=16))
    assert x.shape == (16, 3, 48, 48)
    assert len({a.tobytes() for a in x}) == 16  # all distinct views
    from onnxmerge import photos

    line, n = describe(None, model, 16), len(photos.available(colour_only=True))
    assert f"16 views of {'all' if n <= 16 else '16 of'} the {n} built-in natural photos" in line


def test_builtin_views_of_one_photo_share_a_group(model):
    """Mirrors and zooms of a photo are in its group: a held-out split never sees them both."""
    pytest.importorskip("skimage")
    from onnxmerge import photos

    cs = calibration_set(model, None, count=16)
    x = _inputs(cs.feeds)
    for i, g in enumerate(cs.groups):
        for j, h in enumerate(cs.groups):
            mirrored = np.array_equal(x[i], x[j][:, :, ::-1])
            assert not (mirrored and g != h)
    pool = photos.available(colour_only=True)
    used = [pool[i] for i in spread(len(pool), 16)]  # spread over every package's photos
    scenes = photos.scene_groups(used)  # the stereo pair is one scene
    assert cs.groups == [scenes[i % len(used)] for i in range(16)]


@given(st.lists(st.integers(0, 5), min_size=2, max_size=40))
def test_holdout_split_is_disjoint_by_group(groups):
    fit, score = holdout_split(groups)
    assert sorted(fit + score) == list(range(len(groups)))
    assert fit and score
    if len(set(groups)) >= 2:
        assert not {groups[i] for i in fit} & {groups[i] for i in score}
