"""A 2-D ConvTranspose as the stride-1 conv it equals on its zero-inserted input (pure numpy).

ONNX's ConvTranspose (weight W (C_in, C_out, kh, kw), one group, dilation 1, stride s, pads
(pt, pl, pb, pr), output_padding (oh, ow)) scatters each input pixel's kernel onto the output:
    y[o, s*i + t - pt] += W[c, o, t] * x[c, i]        (per axis; output (H-1)s + k - pt - pb + oh)
Gathering instead of scattering, the same y is a stride-1 cross-correlation of
    x_up[c, s*i] = x[c, i], zero between        (zero_insert: (H-1)s + 1 rows)
with the kernel transposed and flipped, W'[o, c, t] = W[c, o, k-1-t], and pads (k-1-pt,
k-1-pl, k-1-pb+oh, k-1-pr+ow): output row Y reads x_up[Y + u - (k-1-pt)], u = k-1-t, i.e.
x_up[Y + pt - t], which is x[i] exactly where Y = s*i + t - pt. (Dumoulin and Visin 2016, "A
guide to convolution arithmetic for deep learning", section 4.) The least-squares refit
(calibration.fit) fits that conv and writes its weight back transposed and flipped.
Where a pad exceeds k - 1 the equivalent pad is negative (a crop); `as_conv` returns None.
"""

from __future__ import annotations

import numpy as np

from onnxmerge.compose import LinearConv
from onnxmerge.geometry import HW, Pads


def as_conv(
    weight: np.ndarray, bias: np.ndarray, pads: Pads, output_padding: HW = (0, 0)
) -> LinearConv | None:
    """The stride-1 LinearConv a ConvTranspose of `weight` (C_in, C_out, kh, kw), one group,
    dilation 1, equals on its zero-inserted input; None where a pad exceeds k - 1."""
    kh, kw = weight.shape[2:]
    top, left, bottom, right = pads
    new = (kh - 1 - top, kw - 1 - left, kh - 1 - bottom + output_padding[0],
           kw - 1 - right + output_padding[1])  # fmt: skip
    if min(new) < 0:
        return None
    return LinearConv(transposed(weight), bias, (1, 1), new)


def transposed(weight: np.ndarray) -> np.ndarray:
    """W'[o, c] = W[c, o] flipped in both spatial axes: its own inverse (ConvTranspose <->
    the equivalent conv)."""
    return np.ascontiguousarray(np.asarray(weight).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def zero_insert(x: np.ndarray, stride: HW) -> np.ndarray:
    """x (N, C, H, W) with stride - 1 zeros between neighbouring pixels: (N, C, (H-1)sh + 1,
    (W-1)sw + 1)."""
    n, c, h, w = x.shape
    sh, sw = stride
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out
