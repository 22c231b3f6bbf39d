"""Calibration inputs: image folders, .npz files, the built-in photos, and bad sources."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.calibration.data import (
    calibration_inputs,
    calibration_set,
    describe,
    spread,
    spread_over,
)
from onnxmerge.calibration.preprocess import TORCH
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
    x = _inputs(calibration_inputs(model, tmp_path / "c.npz", count=4))
    np.testing.assert_array_equal(x, arr)
    x = _inputs(calibration_inputs(model, tmp_path / "c.npz", count=3))  # spread, in order
    np.testing.assert_array_equal(x, arr[[0, 2, 3]])
    assert calibration_set(model, tmp_path / "c.npz", count=3).groups == [0, 2, 3]
    np.savez(tmp_path / "g.npz", a=arr, groups=np.array([7, 7, 3, 3]))  # `groups` is no input
    cs = calibration_set(model, tmp_path / "g.npz", count=4)
    np.testing.assert_array_equal(_inputs(cs.feeds), arr)
    assert cs.groups == [1, 1, 0, 0]  # numbered by value: the same sources kept together


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
    assert cs.groups == [0, 0, 1]  # the second file's arrays are their own sources
    with pytest.raises(OnnxMergeError, match="not both"):
        calibration_set(model, [tmp_path / "a", tmp_path / "n.npz"])
    assert "a, " in describe([tmp_path / "a", tmp_path / "b"], model, 6)


def test_fewer_inputs_than_images_take_from_every_folder_and_file(model, tmp_path):
    """A count below the pool spreads over it: a second folder (or .npz) is not ignored
    because the first one alone holds `count` images, however small it is."""
    for d, n in (("a", 10), ("b", 2)):
        (tmp_path / d).mkdir()
        for i in range(n):
            shade = 200 if d == "b" else 5 * i  # b's are bright, a's dark
            PIL.fromarray(np.full((50, 60, 3), shade, np.uint8)).save(tmp_path / d / f"{i}.png")
    x = _inputs(calibration_inputs(model, [tmp_path / "a", tmp_path / "b"], count=3))
    assert len(x) == 3 and len({a.tobytes() for a in x}) == 3
    assert x[-1].mean() > 1.0 and x[0].mean() < 0  # b gave one, a the others
    rng = np.random.default_rng(3)
    arr = rng.standard_normal((12, 3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "g.npz", a=arr[:10], groups=np.arange(10) // 2 - 3)  # negatives too
    np.savez(tmp_path / "n.npz", a=arr[10:])
    cs = calibration_set(model, [tmp_path / "g.npz", tmp_path / "n.npz"], count=4)
    np.testing.assert_array_equal(_inputs(cs.feeds), arr[[1, 5, 9, 11]])  # 3 of g, 1 of n
    assert cs.groups == [0, 2, 4, 6]  # g's five groups renumbered 0-4, then n's own two


def test_fewer_inputs_than_arrays_take_every_source_group_of_an_npz(model, tmp_path):
    """Crops that cycle over 24 photos (view i of photo i % 24, as a benchmark writes them):
    16 of 128 evenly spaced would be 3 photos over and over; each group gives one instead,
    and above one per group the rest go in proportion, spread within each group."""
    arr = np.arange(128, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 48, 48))
    np.savez(tmp_path / "c.npz", a=arr, groups=np.arange(128) % 24)
    cs = calibration_set(model, tmp_path / "c.npz", count=16)
    assert len(set(cs.groups)) == 16
    picked = _inputs(cs.feeds)[:, 0, 0, 0].astype(int)
    assert [i % 24 for i in picked] == cs.groups  # every feed keeps its own group
    cs = calibration_set(model, tmp_path / "c.npz", count=48)
    counts = np.bincount(cs.groups, minlength=24)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # 128 = 24 x 5 + 8


@given(st.integers(0, 200), st.integers(1, 64))
def test_spread_takes_distinct_evenly_spaced_items(n, count):
    picked = spread(n, count)
    assert len(picked) == min(n, count) and picked == sorted(set(picked))
    assert all(0 <= i < n for i in picked)
    if picked:  # no stretch left out wider than n / count: neither end is favoured
        assert max(np.diff([-1, *picked, n])) <= -(-n // count) + 1


@given(st.lists(st.integers(0, 30), max_size=8), st.integers(1, 60))
def test_spread_over_gives_every_source_its_share(sizes, count):
    sources = [[(j, i) for i in range(n)] for j, n in enumerate(sizes)]
    picked = spread_over(sources, count)
    assert len(picked) == min(count, sum(sizes)) and picked == sorted(set(picked))
    taken = [sum(j == k for j, _ in picked) for k in range(len(sizes))]
    live = [n for n in sizes if n]
    if count >= len(live):  # every source with items gives at least one
        assert all(t >= 1 for t, n in zip(taken, sizes, strict=True) if n)
        # in proportion: no source got an extra item while another sat further below its share
        room = [t / n for t, n in zip(taken, sizes, strict=True) if n and t < n]
        extra = [(t - 1) / n for t, n in zip(taken, sizes, strict=True) if t > 1]
        assert not room or not extra or max(extra) <= min(room) + 1e-9
    else:
        assert sum(t > 0 for t in taken) == count


@pytest.mark.parametrize(
    "kind",
    ["empty-folder", "bad-npz", "bad-groups", "wrong-suffix", "broken-image", "one-array",
     "nan", "strings"],
)  # fmt: skip
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
    elif kind in ("nan", "strings"):  # NaN crashed importance ('non-finite importance nan')
        src = tmp_path / "c.npz"
        a = np.zeros((4, 3, 48, 48), np.float32)
        a[2, 0, 5, 5] = np.nan
        np.savez(src, a=a if kind == "nan" else np.full((4, 3, 48, 48), "x"))
    elif kind == "wrong-suffix":
        src = tmp_path / "c.txt"
        src.write_text("x")
    else:
        (tmp_path / "x.png").write_bytes(b"not a png")
        src = tmp_path
    with pytest.raises(OnnxMergeError, match="--calib"):
        calibration_inputs(model, src)


@pytest.mark.parametrize("count", [-3, 0, 1])
def test_fewer_than_two_inputs_is_one_clear_error(model, count):
    with pytest.raises(OnnxMergeError, match="--calib-count.*at least 2 inputs"):
        calibration_set(model, None, count=count)
    five = zoo.resnet(18, width=0.25, size=48)  # not an image: random fields
    five.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(OnnxMergeError, match="at least 2 inputs"):
        calibration_set(five, None, count=count)


def test_an_input_at_batch_above_one_is_refused_with_the_shape_to_give(model, run_cli, tmp_path):
    """--input-shape x:2x... on a dynamic batch (or an export fixed at 2) failed in ONNX Runtime
    ('Got: 1 Expected: 2'): calibration feeds one input at a time."""
    import onnx

    two = onnx.ModelProto()
    two.CopyFrom(model)
    dim = two.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 2
    with pytest.raises(OnnxMergeError, match="at batch 2: calibration runs at batch 1"):
        calibration_set(two, None, count=4)
    dim.Clear()
    dim.dim_param = "N"
    src = tmp_path / "m.onnx"
    onnx.save(two, src)
    name = two.graph.input[0].name
    r = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", "--input-shape",
                f"{name}:2x3x48x48")  # fmt: skip
    assert r.rc == 2 and len(r.stderr_lines) == 1 and f"{name}:1x3x48x48" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_random_fields_line_says_why_for_a_non_image_input(model, monkeypatch):
    """Photos cannot feed a 5-channel input: the line must not suggest installing them."""
    from onnxmerge import photos

    five = zoo.resnet(18, width=0.25, size=48)
    five.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    line = describe(None, five, 8)
    assert "smooth random fields" in line and "not one image" in line
    assert "photos" not in line and "--calib NPZ" in line
    monkeypatch.setattr(photos, "available", lambda colour_only=False: [])
    line = describe(None, model, 8)  # an image input without photos: install them
    assert "smooth random fields" in line and "onnxmerge[photos]" in line


def test_cli_calib_count_below_two_is_one_line_and_no_output(model, run_cli, tmp_path):
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    r = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", "--calib-count", "1")
    assert r.rc == 2 and r.stderr.count("\n") == 1 and r.stderr.count("at least 2 inputs") == 1
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
    from onnxmerge.calibration import data

    packages: dict[str, list] = {}
    for p in photos.available(colour_only=True):
        packages.setdefault(p.package, []).append(p)
    used = spread_over(list(packages.values()), 16)  # every package gives some
    assert {p.package for p in used} == set(packages)
    expected = data._views([photos.rgb(p) for p in used], (3, 48, 48), TORCH, 16)
    np.testing.assert_array_equal(x, np.stack(expected))
    scenes = photos.scene_groups(used)  # the stereo pair is one scene
    assert cs.groups == [scenes[i % len(used)] for i in range(16)]


@given(st.lists(st.integers(0, 5), min_size=2, max_size=40))
def test_holdout_split_is_disjoint_by_group(groups):
    fit, score = holdout_split(groups)
    assert sorted(fit + score) == list(range(len(groups)))
    assert fit and score
    if len(set(groups)) >= 2:
        assert not {groups[i] for i in fit} & {groups[i] for i in score}


def test_npz_arrays_must_be_n_times_the_input_not_a_reshape_of_it(model, tmp_path):
    """An NHWC array (or another size with as many elements) is refused, not reshaped into
    scrambled inputs; one array shaped as the input is one input."""
    rng = np.random.default_rng(2)
    for name, shape in (("nhwc", (3, 48, 48, 3)), ("small", (4, 3, 24, 24))):
        np.savez(tmp_path / f"{name}.npz", a=rng.standard_normal(shape).astype(np.float32))
        with pytest.raises(OnnxMergeError, match=r"arrays are \[.*\], the model takes N x 3"):
            calibration_set(model, tmp_path / f"{name}.npz", count=4)
    one = rng.standard_normal((3, 48, 48)).astype(np.float32)
    np.savez(tmp_path / "one.npz", a=one, b=one[None] + 1)
    np.testing.assert_array_equal(
        _inputs(calibration_inputs(model, tmp_path / "one.npz", count=4)), [one, one + 1]
    )
