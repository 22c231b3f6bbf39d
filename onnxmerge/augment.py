"""Training sources and function-matching views for distillation (needs onnxmerge[torch]).

Beyer et al. (CVPR 2022, "Knowledge distillation: A good teacher is patient and consistent")
distill well from few images when the teacher and the student see the *same* aggressively
augmented view: every view is a new point of the teacher's function to match, so a few hundred
source images go far. The views here are theirs:

- a random resized crop (aspect 3/4..4/3), resized bilinearly (antialiased) to the model's
  H x W, mirrored half the time;
- for images, a colour jitter (brightness, contrast, saturation, each x U(0.6, 1.4)) in RGB
  [0, 1], then the model's preprocessing (calibration.preprocess: ImageNet's mean and std by
  default);
- mixup (Zhang et al., ICLR 2018) within the batch: x <- l x + (1 - l) x[perm], l ~ U(0, 1).

AUGMENT names two settings of crop area and mixup. "strong" is theirs (Inception crops of
8-100% of the source, mixup on half of the batches), made for long schedules from scratch.
"mild" (crops of 25-100%, no mixup; the default) keeps the views close to whole photos, as
a deployed network sees them: onnxmerge's student starts next to its teacher and trains for
minutes. On the pretrained MobileNetV2 (lr 1e-5, 20 training sources, KL on 100 crops of 5
other photos; benchmarks/results/distill.md, 2026-12-02 runs 9-10), width at 1.16x went from
KL 0.94 to 0.77 in 5 minutes with mild views and stayed at 0.94 with strong ones (no step
beat step 0 on the held-out sources); `both` at 1.17x went to 0.70 and 0.68.

Sources are images (folders; the built-in photos) kept as 3 x h x w RGB floats with the
shorter side resized to 1.5 x the model's, or the arrays of an .npz (already model inputs:
cropped and mirrored, no colour jitter). Each source has a group (the views of one photo; an
.npz's `groups`), which the held-out split of onnxmerge.distill keeps on one side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxmerge.calibration.data import _IMAGE_SUFFIXES
from onnxmerge.calibration.preprocess import TORCH, Preprocess, channels_last, image_hw
from onnxmerge.errors import OnnxMergeError
from onnxmerge.torch_graph import _torch

AUGMENT = {"mild": ((0.25, 1.0), 0.0), "strong": ((0.08, 1.0), 0.5)}  # (crop area, mixup)
ASPECT = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast, saturation factors in [1 - JITTER, 1 + JITTER]
OVERSIZE = 1.5  # sources are kept with the shorter side at this times the model's


@dataclass
class Sources:
    """Training sources: `arrays[i]` is C x h x w of group `groups[i]` (`names[i]`).

    Images (`normalize` True) are uint8 RGB, and get colour jitter in [0, 1] and then
    `preprocess`; model-space arrays (`normalize` False, float32 from an .npz) are used
    as they are. `channels_last`: the model takes views as N x H x W x C (Views.batch).
    """

    arrays: list[np.ndarray]
    groups: list[int]
    names: list[str]
    normalize: bool
    preprocess: Preprocess = TORCH
    channels_last: bool = False
    channels: int = 3  # the model's: images (kept RGB) give their luma to a 1-channel one


def _rgb(image: np.ndarray, side: int) -> np.ndarray:
    """HxW or HxWxC uint8 -> 3 x h x w uint8 (a quarter of float32's memory), the shorter
    side resized to `side`."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    im = Image.fromarray(np.ascontiguousarray(a[:, :, :3]).astype(np.uint8))
    scale = side / min(im.size)
    im = im.resize((max(side, round(im.size[0] * scale)), max(side, round(im.size[1] * scale))))
    return np.asarray(im, np.uint8).transpose(2, 0, 1).copy()


def load_sources(
    data: Sequence[str | os.PathLike] | None,
    shape: Sequence[int],
    preprocess: Preprocess = TORCH,
) -> Sources:
    """Sources from folders of images and/or .npz files (`data`), or the built-in photos (None).

    `shape` is the model input's (C, H, W), or (H, W, 3) for an NHWC image input. A folder's
    images are one group each, prepared as `preprocess` says; an .npz's arrays (N x the
    input, every key but `groups`) are one group each unless it has `groups`.
    Folders and .npz files cannot be mixed (images are normalized here, arrays are not).
    Raises OnnxMergeError for a missing path, an unreadable image, arrays of another shape, or
    images for a model whose input is not an image (3 or 1 channels, first or last).
    """
    layout = channels_last(shape)  # None: not an image
    last, image_like = bool(layout), layout is not None
    (h, w), c = image_hw(shape), int(shape[2] if last else shape[0])
    side = int(round(OVERSIZE * max(h, w)))
    paths = [Path(p) for p in data] if data else []
    arrays: list[np.ndarray] = []
    groups: list[int] = []
    names: list[str] = []
    if not paths:
        if not image_like:
            raise OnnxMergeError(
                f"the model's input is {list(shape)}, not an image: pass --data with an .npz "
                "of input arrays"
            )
        from onnxmerge import photos

        check_data(paths)  # no photo installed: the error
        pool = photos.available()
        arrays = [_rgb(photos.rgb(p), side) for p in pool]
        groups, names = photos.scene_groups(pool), [p.name for p in pool]
        return Sources(arrays, groups, names, True, preprocess, last, c)
    check_data(paths)
    kinds = {p.is_dir() for p in paths}
    if len(kinds) > 1:
        raise OnnxMergeError("--data: pass folders of images or .npz files, not both")
    for p in paths:
        if p.is_dir():
            if not image_like:
                raise OnnxMergeError(
                    f"--data {p}: a folder of images needs an N x C x H x W (or N x H x W x C) "
                    f"input, C 3 or 1; the model's is {list(shape)}: pass an .npz of arrays"
                )
            for f in _image_files(p):
                arrays.append(_rgb(_read_image(f), side))
                groups.append(len(names))
                names.append(str(f))
        elif p.is_file() and p.suffix == ".npz":
            first = len(names)
            for i, (a, g) in enumerate(_npz_arrays(p, tuple(int(s) for s in shape))):
                arrays.append(a.transpose(2, 0, 1) if last else a)  # kept C x H x W
                groups.append(first + (i if g is None else g))  # groups unique per file
                names.append(f"{p}[{i}]")
        elif not p.exists():
            raise OnnxMergeError(f"--data {p}: not found")
        else:
            raise OnnxMergeError(f"--data {p}: expected a folder of images or an .npz")
    groups = list(np.unique(groups, return_inverse=True)[1].tolist())
    return Sources(arrays, groups, names, kinds == {True}, preprocess, last, c)


def check_data(data: Sequence[str | os.PathLike], flag: str = "--data") -> None:
    """Raise OnnxMergeError unless every path is a folder or an .npz file, or, with no path
    (the built-in photos), some are installed (onnxmerge.photos; before any work)."""
    from onnxmerge import photos

    if not data and not photos.available():
        raise OnnxMergeError(
            f"no folder or .npz given ({flag}): distillation trains on the built-in photos, "
            f"which need scikit-image: pip install 'onnxmerge[photos]', or pass {flag} FOLDER"
        )
    for p in map(Path, data):
        if not p.exists():
            raise OnnxMergeError(f"{flag} {p}: not found")
        if not (p.is_dir() or p.suffix == ".npz"):
            raise OnnxMergeError(f"{flag} {p}: expected a folder of images or an .npz")


def _image_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise OnnxMergeError(f"--data {folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return files


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise OnnxMergeError("--data FOLDER needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise OnnxMergeError(f"--data {path}: not a readable image ({exc})") from None


def _npz_arrays(path: Path, shape: tuple[int, int, int]):
    try:
        with np.load(path) as data:
            keys = [k for k in data.files if k != "groups"]
            stacked = np.concatenate([np.asarray(data[k], np.float32) for k in keys])
            groups = np.asarray(data["groups"]).ravel() if "groups" in data.files else None
    except (ValueError, OSError, EOFError) as exc:
        reason = "pickled objects" if "pickle" in str(exc) else exc
        raise OnnxMergeError(f"--data {path}: not an .npz of input arrays ({reason})") from None
    if stacked.ndim != 4 or tuple(stacked.shape[1:]) != shape:
        raise OnnxMergeError(
            f"--data {path}: arrays are {list(stacked.shape)}, the model takes N x "
            f"{' x '.join(map(str, shape))}"
        )
    if groups is not None and (len(groups) != len(stacked) or groups.dtype.kind not in "iu"):
        raise OnnxMergeError(f"--data {path}: 'groups' must hold one integer per array")
    if not np.isfinite(stacked).all():
        bad = int((~np.isfinite(stacked)).reshape(len(stacked), -1).any(axis=1).sum())
        raise OnnxMergeError(f"--data {path}: {bad} of {len(stacked)} arrays hold NaN or inf")
    for i, a in enumerate(stacked):
        yield a, None if groups is None else int(groups[i])


def split_sources(groups: Sequence[int], holdout: float) -> tuple[list[int], list[int]]:
    """(train source indices, held-out source indices): round(holdout x groups) groups, evenly
    spaced in group order, are held out (at least one when there are two or more)."""
    if not 0 <= holdout < 1:
        raise OnnxMergeError(f"holdout must be in [0, 1), got {holdout}")
    ids = sorted(set(groups))
    n_held = 0 if holdout == 0 or len(ids) < 2 else max(1, round(holdout * len(ids)))
    held_groups = {ids[int((i + 0.5) * len(ids) / n_held)] for i in range(n_held)}
    train = [i for i, g in enumerate(groups) if g not in held_groups]
    held = [i for i, g in enumerate(groups) if g in held_groups]
    return train, held


class Views:
    """Seeded function-matching views of `sources` at H x W (see the module docstring):
    crops of `area` (a range of fractions of the source), mixed up on a `mixup` share of
    the batches."""

    def __init__(
        self,
        sources: Sources,
        hw: tuple[int, int],
        seed: int = 0,
        area: tuple[float, float] = AUGMENT["mild"][0],
        mixup: float = AUGMENT["mild"][1],
    ) -> None:
        self.sources = sources
        self.hw = (int(hw[0]), int(hw[1]))
        self.mixup = mixup
        self.area = area
        self.rng = np.random.default_rng(seed)

    def batch(self, indices: Sequence[int], augment: bool = True) -> Any:
        """A float32 torch tensor (len(indices), C, H, W), or N x H x W x C for a channels-last
        model: one view of each source index.
        `augment=False` gives the centre crop of each, unjittered, unmixed."""
        torch = _torch()
        views = [self._view(i, augment) for i in indices]
        x = torch.stack(views)
        if augment and len(indices) > 1 and self.rng.random() < self.mixup:
            lam = torch.from_numpy(self.rng.random(len(indices)).astype(np.float32))
            lam = lam.view(-1, 1, 1, 1)
            x = lam * x + (1 - lam) * x[torch.from_numpy(self.rng.permutation(len(indices)))]
        return x.permute(0, 2, 3, 1).contiguous() if self.sources.channels_last else x

    def _view(self, i: int, augment: bool) -> Any:
        torch = _torch()
        from torch.nn import functional as F

        src = torch.from_numpy(self.sources.arrays[i])
        _, sh, sw = src.shape
        h, w = self.hw
        if augment:
            top, left, ch, cw = self._box(sh, sw)
        else:  # the centre crop of the model's aspect, as large as fits
            ch, cw = (sh, round(sh * w / h)) if sh * w / h <= sw else (round(sw * h / w), sw)
            top, left = (sh - ch) // 2, (sw - cw) // 2
        crop = src[:, top : top + ch, left : left + cw][None].float()
        if self.sources.normalize:
            crop = crop / 255.0
        x = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
        if augment and self.rng.random() < 0.5:
            x = x.flip(-1)
        if not self.sources.normalize:
            return x
        if augment:
            x = self._jitter(x)
        return self.sources.preprocess.normalize(x, self.sources.channels)

    def _box(self, sh: int, sw: int) -> tuple[int, int, int, int]:
        for _ in range(10):
            area = sh * sw * self.rng.uniform(*self.area)
            aspect = np.exp(self.rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1])))
            cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < cw <= sw and 0 < ch <= sh:
                return (
                    int(self.rng.integers(0, sh - ch + 1)),
                    int(self.rng.integers(0, sw - cw + 1)),
                    ch,
                    cw,
                )
        side = min(sh, sw)
        return (sh - side) // 2, (sw - side) // 2, side, side

    def _jitter(self, x: Any) -> Any:
        f = 1 + self.rng.uniform(-JITTER, JITTER, 3).astype(np.float32)
        x = x * float(f[0])  # brightness
        x = (x - x.mean()) * float(f[1]) + x.mean()  # contrast
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = (x - gray) * float(f[2]) + gray  # saturation
        return x.clamp(0, 1)


def held_views(
    sources: Sources, held_idx: list[int], hw: tuple[int, int], per_source: int, seed: int,
    most: int,
) -> Any:  # fmt: skip
    """The held-out views as one torch batch: each source's centre crop, then seeded mild
    views (whatever the training's setting, so that runs with either score on the same
    views); at most `most` in all (the first sources, fewer views each). None when nothing
    is held out."""
    if not held_idx:
        return None
    torch = _torch()
    held_idx = held_idx[:most]
    per_source = max(1, min(per_source, most // len(held_idx)))
    fixed = Views(sources, hw, seed + 1, *AUGMENT["mild"])
    xs = [fixed.batch(held_idx, augment=False)]
    for _ in range(per_source - 1):
        xs.append(fixed.batch(held_idx))
    return torch.cat(xs)
