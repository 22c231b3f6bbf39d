"""How a photo becomes a model input: the layout, the channel order and the scaling.

Exporters disagree, and a calibration on wrongly scaled photos measures the network where it
never runs. torchvision models take N x 3 x H x W RGB in [0, 1], normalized with ImageNet's
mean and std; Keras applications exported by tf2onnx take N x H x W x 3, scaled per family as
Keras' `imagenet_utils.preprocess_input` names it: "tf" (x / 127.5 - 1: MobileNet, Inception),
"caffe" (BGR, ImageNet's mean subtracted, no scaling: ResNet50, VGG), "torch" (DenseNet), and
raw 0-255 pixels where the network rescales itself (EfficientNet, ConvNeXt, RegNet). MODES
holds those four under Keras' names ("raw" for the last); `--mean`/`--std` override a mode's
values (in 0-255 pixel units and the model's channel order, as OpenVINO's `mean_values` and
`scale_values`):

    model input = (pixel - mean) / std,  pixel in 0..255, channels reversed first if `bgr`.

The layout is read from the input's shape: 3 channels first (N x 3 x H x W) or last
(N x H x W x 3, TensorFlow's NHWC); a 1-channel input (N x 1 x H x W or N x H x W x 1: MNIST,
X-rays, documents) gets the photos' luma.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnxmerge.errors import OnnxMergeError


@dataclass(frozen=True)
class Preprocess:
    """Per-channel (pixel - mean) / std in 0-255 units, in the model's channel order (after
    the RGB -> BGR reversal when `bgr`)."""

    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    bgr: bool = False

    def normalize(self, rgb: np.ndarray, channels: int = 3) -> np.ndarray:
        """3 x H x W RGB in [0, 1] (numpy or torch) -> the model's `channels` (3, or 1: the
        luma of ITU-R BT.601, as PIL's "L", with the mean of the three means and stds)."""
        x = rgb[[2, 1, 0]] if self.bgr else rgb
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1) / 255
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1) / 255
        if channels == 1:
            x = 0.299 * rgb[0:1] + 0.587 * rgb[1:2] + 0.114 * rgb[2:3]
            mean, std = mean.mean(keepdims=True)[0], std.mean(keepdims=True)[0]
        if not isinstance(x, np.ndarray):  # a torch tensor
            mean, std = (x.new_tensor(v) for v in (mean, std))
        return (x - mean) / std

    def record(self) -> dict:
        """The plan's JSON form (preprocess_from reads it back)."""
        mode = next((k for k, v in MODES.items() if v == self), None)  # for readers
        return {"mode": mode, "mean": list(self.mean), "std": list(self.std), "bgr": self.bgr}

    def text(self) -> str:
        """The mode's name when it is one of MODES, else its values (reports, plans)."""
        name = self.record()["mode"]
        order = "BGR" if self.bgr else "RGB"
        return (
            f'"{name}"'
            if name
            else f"{order}, mean {list(self.mean)}, std {list(self.std)} (0-255 units)"
        )


MODES = {
    "torch": Preprocess(),
    "tf": Preprocess((127.5,) * 3, (127.5,) * 3),
    "caffe": Preprocess((103.939, 116.779, 123.68), (1.0,) * 3, bgr=True),
    "raw": Preprocess((0.0,) * 3, (1.0,) * 3),
}
TORCH = MODES["torch"]


def preprocess_from(
    mode: str | Preprocess | Mapping | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
) -> Preprocess:
    """A Preprocess from a mode name (MODES; default "torch"), one given, or a plan's record
    (Preprocess.record), `mean`/`std` overriding its values (3 numbers, or one for all
    channels; "R,G,B" strings as the CLI gives them). Raises OnnxMergeError for an unknown
    mode, a wrong count or a std not above 0."""
    if isinstance(mode, Mapping):
        mean, std = mean or mode.get("mean"), std or mode.get("std")
        found = replace(TORCH, bgr=bool(mode.get("bgr", False)))
    elif isinstance(mode, Preprocess):
        found = mode
    elif (mode or "torch") in MODES:
        found = MODES[mode or "torch"]
    else:
        raise OnnxMergeError(f"--preprocess {mode}: choose one of {', '.join(MODES)}")
    if mean is not None:
        found = replace(found, mean=_three(mean, "--mean"))
    if std is not None:
        found = replace(found, std=_three(std, "--std"))
        if min(found.std) <= 0:
            raise OnnxMergeError(f"--std {std}: standard deviations must be above 0")
    return found


def _three(values: Sequence[float] | str, flag: str) -> tuple[float, float, float]:
    try:
        parts = values.split(",") if isinstance(values, str) else list(values)
        found = [float(v) for v in parts]
    except (TypeError, ValueError):
        raise OnnxMergeError(f"{flag} {values}: expected numbers, e.g. 123.7,116.3,103.5") from None
    if len(found) == 1:
        found *= 3
    if len(found) != 3 or not np.isfinite(found).all():
        raise OnnxMergeError(f"{flag} {values}: give 3 finite numbers (one per channel) or 1")
    return (found[0], found[1], found[2])


def channels_last(sample: Sequence[int]) -> bool | None:
    """Whether an input of per-sample shape `sample` (no batch) is an image (3 or 1 channels,
    H and W above 1) with its channels last (H x W x C: True) or first (C x H x W: False);
    None when it is not one. Colour wins over gray, then channels first."""
    if len(sample) != 3:
        return None
    for c in (3, 1):
        if sample[0] == c and min(sample[1:]) > 1:
            return False
        if sample[2] == c and min(sample[:2]) > 1:
            return True
    return None


def image_hw(sample: Sequence[int]) -> tuple[int, int]:
    """(H, W) of a per-sample shape: H x W x C when channels_last, else C x H x W."""
    return (int(sample[0]), int(sample[1])) if channels_last(sample) else (
        int(sample[1]), int(sample[2]))  # fmt: skip


def image_channels(sample: Sequence[int]) -> int:
    """C of an image input's per-sample shape (3 or 1; channels_last tells where it is)."""
    return int(sample[2] if channels_last(sample) else sample[0])


def photo(
    rgb: np.ndarray,
    hw: tuple[int, int],
    preprocess: Preprocess = TORCH,
    zoom: float = 1.0,
    channels: int = 3,
) -> np.ndarray:
    """torchvision's eval crop of an H x W x 3 uint8 photo (shorter side to 256/224 of the
    model's, centre crop; `zoom` crops tighter), as `channels` x h x w float32 model
    channels (Preprocess.normalize)."""
    from PIL import Image

    h, w = hw
    im = Image.fromarray(np.ascontiguousarray(rgb[:, :, :3]).astype(np.uint8))
    scale = zoom * max(h, w) * 256 / 224 / min(im.size)
    im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))))
    left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
    x = np.asarray(im.crop((left, top, left + w, top + h)), np.float32).transpose(2, 0, 1)
    return preprocess.normalize(x / 255.0, channels).astype(np.float32)
