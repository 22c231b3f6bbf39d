"""Convolution geometry: output sizes, `auto_pad` resolution and merged kernels (pure Python).

Output size of a conv (ONNX Conv, per spatial axis), with input size N, kernel k, stride s,
dilation d and pads (p_begin, p_end):

    out = floor((N + p_begin + p_end - d*(k - 1) - 1) / s) + 1

`auto_pad` SAME_UPPER / SAME_LOWER (ONNX operator spec, Conv): out = ceil(N / s) and the total
padding is max(0, (out - 1)*s + d*(k - 1) + 1 - N), split evenly with the odd one at the end
(SAME_UPPER) or the beginning (SAME_LOWER). VALID is no padding.

Merged geometry of a chain of convs (kernel composition, see compose.py):
K = 1 + sum_j d_j (k_j - 1) prod_{i<j} s_i, stride prod s_j, pads sum_j p_j prod_{i<j} s_i.

Pads are ordered (top, left, bottom, right) for 2-D, as ONNX orders them.
"""

from __future__ import annotations

from collections.abc import Sequence

HW = tuple[int, int]
Pads = tuple[int, int, int, int]


def pair(v: int | Sequence[int]) -> HW:
    """(v, v) for an int, else the two values of a 2-sequence, as ints."""
    if isinstance(v, int) or hasattr(v, "__index__"):
        return (int(v), int(v))
    a, b = v
    return (int(a), int(b))


def out_hw(in_hw: Sequence[int], kernel: Sequence[int], stride, dilation, pads) -> HW:
    """Output (H, W) of a 2-D conv on an input of size `in_hw` (ONNX Conv formula)."""
    (h, w), (kh, kw) = in_hw, kernel
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    t, l, b, r = pads
    return (
        (h + t + b - dh * (kh - 1) - 1) // sh + 1,
        (w + l + r - dw * (kw - 1) - 1) // sw + 1,
    )


def transpose_out_hw(in_hw: Sequence[int], kernel: Sequence[int], stride, dilation, pads,
                     output_padding: Sequence[int] = (0, 0)) -> HW:  # fmt: skip
    """Output (H, W) of a 2-D ConvTranspose (ONNX ConvTranspose formula, explicit pads):
    out = s*(N - 1) + output_padding + d*(k - 1) + 1 - p_begin - p_end."""
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    t, l, b, r = pads
    (h, w), (kh, kw), (oh, ow) = in_hw, kernel, output_padding
    return (
        sh * (h - 1) + oh + dh * (kh - 1) + 1 - t - b,
        sw * (w - 1) + ow + dw * (kw - 1) + 1 - l - r,
    )


def same_pads_needed(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding SAME_* asks for along one axis, before clamping at 0 (may be negative)."""
    out = -(-size // stride)
    return (out - 1) * stride + dilation * (kernel - 1) + 1 - size


def auto_pads(
    auto_pad: str, in_size: Sequence[int], kernel: Sequence[int], stride, dilation
) -> tuple[int, ...]:
    """Explicit ONNX pads [begin..., end...] that `auto_pad` stands for (any rank).

    Raises ValueError for an unknown `auto_pad` value. NOTSET is not resolved here (the
    explicit `pads` attribute applies).
    """
    n = len(kernel)
    stride = list(stride) if not isinstance(stride, int) else [stride] * n
    dilation = list(dilation) if not isinstance(dilation, int) else [dilation] * n
    if auto_pad == "VALID":
        return (0,) * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_size, kernel, stride, dilation, strict=True):
        total = max(0, same_pads_needed(size, k, s, d))
        small, large = total // 2, total - total // 2
        begin.append(large if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else large)
    return tuple(begin + end)


def merged_geometry(
    kernels: Sequence[HW | int],
    strides: Sequence[HW | int],
    dilations: Sequence[HW | int],
    pads: Sequence[Pads],
) -> tuple[HW, HW, Pads]:
    """(kernel, stride, pads) of the one conv a chain of convs composes into.

    K = 1 + sum_j d_j*(k_j-1)*prod_{i<j} s_i, stride = prod s_j, pads = sum_j p_j*prod_{i<j} s_i.
    Residuals do not change it unless a shortcut reaches outside the main window (then the
    kernel grows; see compose.add_parallel).
    """
    k, s, p = [1, 1], [1, 1], [0, 0, 0, 0]
    for kern, st, dil, pd in zip(kernels, strides, dilations, pads, strict=True):
        kern, st, dil = pair(kern), pair(st), pair(dil)
        for ax in range(2):
            k[ax] += dil[ax] * (kern[ax] - 1) * s[ax]
            p[ax] += pd[ax] * s[ax]
            p[ax + 2] += pd[ax + 2] * s[ax]
            s[ax] *= st[ax]
    return (k[0], k[1]), (s[0], s[1]), (p[0], p[1], p[2], p[3])
