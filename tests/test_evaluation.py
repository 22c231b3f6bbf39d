"""What the summary scores on (calibration.evaluation): inputs no choice was made on."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import api, photos, zoo
from onnxmerge.calibration import evaluation as ev
from onnxmerge.calibration.data import calibration_set
from onnxmerge.errors import OnnxMergeError
from onnxmerge.runtime import session

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def model():
    return zoo.resnet(18, width=0.25, size=32)


def _pool(n_packages: int, sizes: list[int]) -> list[photos.Photo]:
    """Fake photos: package i % n_packages; each is its own scene but for a pair (0 and 1)."""
    out = []
    for i, size in enumerate(sizes):
        scene = "pair" if i < 2 else f"s{i}"
        value = np.full((size, size + 3, 3), i * 5 % 256, np.uint8)
        out.append(photos.Photo(f"p{i}", scene, True, lambda v=value: v, f"pkg{i % n_packages}"))
    return out


def _scenes_read(monkeypatch, call) -> set[str]:
    seen: list[str] = []
    real = photos.rgb
    monkeypatch.setattr(photos, "rgb", lambda p: (seen.append(p.scene), real(p))[1])
    call()
    return set(seen)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 9), packages=st.integers(1, 3), calib=st.integers(2, 12),
    count=st.integers(1, 20),
)  # fmt: skip
def test_unused_photos_share_no_scene_with_the_calibration(model, n, packages, calib, count):
    """Over random pools: the photos scored on show no scene the calibration showed (the two
    photos of one scene count as one), at most `count` views; none left: None (held-out)."""
    pool = _pool(packages, [40 + 7 * i for i in range(n)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(photos, "available", lambda colour_only=False: pool)
        used = _scenes_read(mp, lambda: calibration_set(model, None, calib))
        found = []
        scored = _scenes_read(mp, lambda: found.append(ev.evaluation_set(model, None, calib)))
        found_with = ev.evaluation_set(model, None, calib, eval_count=count)
    assert not used & scored
    left = {p.scene for p in pool} - used
    if not left:
        assert found == [None] and found_with is None
        return
    assert scored == left and found[0].on == ev.UNUSED_PHOTOS and found[0].unseen
    photos_left = sum(p.scene in left for p in pool)  # one view each: no mirrors, no zooms
    assert len(found_with.feeds) == min(count, photos_left) and found_with.unseen
    assert all(f["input"].shape == (1, 3, 32, 32) for f in found_with.feeds)


def test_eval_data_is_read_as_calib_and_its_errors_name_eval(model, tmp_path):
    arr = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "e.npz", a=arr)
    found = ev.evaluation_set(model, tmp_path / "c.npz", 8, 0, [tmp_path / "e.npz"], 32)
    assert found.on == ev.EVAL and found.unseen and len(found.feeds) == 5
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in found.feeds]), arr)
    assert len(ev.evaluation_set(model, None, 8, 0, tmp_path / "e.npz", 3).feeds) == 3
    for i in range(3):  # a folder: one centre crop per image, however many are asked for
        (tmp_path / "photos").mkdir(exist_ok=True)
        PIL.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"photos/{i}.png")
    assert len(ev.evaluation_set(model, None, 8, 0, tmp_path / "photos", 32).feeds) == 3
    (tmp_path / "empty").mkdir()
    for bad, words in (
        (tmp_path / "nowhere", "--eval"),
        (tmp_path / "empty", "--eval"),
        (tmp_path / "e.npz", "--eval-count 0"),
    ):
        with pytest.raises(OnnxMergeError, match="^" + words) as e:
            ev.deferred(model, {"eval_data": bad, "eval_count": 0 if "count" in words else 32})
        assert "--calib" not in str(e.value)
    assert ev.evaluation_set(model, tmp_path / "e.npz", 8) is None  # --calib of one's own only


def test_random_fields_scored_on_are_fresh(model, monkeypatch):
    monkeypatch.setattr(photos, "available", lambda colour_only=False: [])
    calib = calibration_set(model, None, 8, seed=3).feeds
    found = ev.evaluation_set(model, None, 8, 3, eval_count=6)
    assert found.on == ev.RANDOM_FIELDS and len(found.feeds) == 6
    for f in found.feeds:
        assert all(not np.allclose(f["input"], c["input"]) for c in calib)


def _agreement(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict]) -> float:
    name = a.graph.output[0].name
    sa, sb = session(a), session(b)
    top = [(sa.run([name], f)[0].argmax(), sb.run([name], f)[0].argmax()) for f in feeds]
    return float(np.mean([x == y for x, y in top]))


@pytest.mark.slow
def test_compress_scores_on_eval_data_and_on_unused_photos_by_default(tmp_path, macs_backend):
    """The summary's fidelity is that of the written network on `--eval` data (checked against
    ONNX Runtime on the original), or on photos the calibration did not use."""
    original = zoo.resnet(18, width=0.25, size=32)
    arr = np.random.default_rng(1).standard_normal((12, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "e.npz", a=arr)
    common = {"cache_dir": tmp_path, "progress": False, "backend": macs_backend, "kind": "depth"}
    res = api.compress(original, 1.3, calib_count=6, eval_data=tmp_path / "e.npz", **common)
    t = res.table
    assert t.fidelity_on == ev.EVAL and t.fidelity_inputs == 12
    feeds = [{"input": a[None]} for a in arr]
    (m,) = t.fidelity.values()
    assert m["top1"] == pytest.approx(_agreement(original, res.model, feeds))
    assert not any("search chose among plans" in line for line in res.summary())
    if photos.available(colour_only=True):
        plain = api.compress(original, 1.3, calib_count=6, **common).table
        assert plain.fidelity_on == ev.UNUSED_PHOTOS and 0 < plain.fidelity_inputs <= 32


def test_distilled_result_scores_on_eval_data_else_on_distillations_held_out(model, monkeypatch):
    """distill_result: --eval data stays the yardstick after distillation (it never trained on
    it); without it, distillation's own held-out views (it may train on the built-in photos)."""
    from types import SimpleNamespace

    from onnxmerge.result import CompressResult
    from onnxmerge.summary import Summary, model_stats

    held = [{"input": np.zeros((1, 3, 32, 32), np.float32)}] * 2
    monkeypatch.setattr(api, "distill", lambda m, t, d, **k: SimpleNamespace(
        model=m, held_out=held, lines=lambda: []))  # fmt: skip
    for scored, on, n in (
        (ev.EvaluationSet(held * 3, ev.EVAL, True), "--eval inputs, after distillation", 6),
        (ev.EvaluationSet(held * 4, ev.UNUSED_PHOTOS, True), "held-out views, after distil", 2),
    ):
        stats = model_stats(model)
        res = CompressResult(model, None, 0, 0, 0, 0, 1,
                             summarize=lambda p, s, st=stats: Summary(st, st))  # fmt: skip
        res.scored = scored
        api.distill_result(res, model, None, width=())
        assert res.table.fidelity_on.startswith(on) and res.table.fidelity_inputs == n
        assert len(res.scored.feeds) == n  # where --int8's rows score next
