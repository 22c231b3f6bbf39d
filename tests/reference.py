"""Independent float64 references for the composition tests: a plain conv, BatchNorm, and
the fine-tune form's padding relocation and skip crops written from first principles (not
onnxmerge's code paths), plus small helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from onnxmerge.compose import LinearConv, fold_affine
from onnxmerge.geometry import HW, Pads, merged_geometry


def ref_conv(x, w, b, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Plain conv2d on x (C, H, W): zero-pad, then sum over taps of a strided window."""
    t, l, bo, r = pads
    xp = np.pad(x, ((0, 0), (t, bo), (l, r)))
    o, ig, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    assert ho >= 1 and wo >= 1
    og = o // groups
    y = np.zeros((o, ho, wo)) + np.asarray(b)[:, None, None]
    for g in range(groups):
        xs = xp[g * ig : (g + 1) * ig]
        for p in range(kh):
            for q in range(kw):
                win = xs[
                    :,
                    p * dh : p * dh + sh * (ho - 1) + 1 : sh,
                    q * dw : q * dw + sw * (wo - 1) + 1 : sw,
                ]
                y[g * og : (g + 1) * og] += np.einsum(
                    "oc,chw->ohw", w[g * og : (g + 1) * og, :, p, q], win
                )
    return y


def ref_lc(x, c: LinearConv):
    return ref_conv(x, c.weight, c.bias, c.stride, c.pads, c.dilation, c.groups)


def bn(x, p):
    gamma, beta, mean, var, eps = (v[:, None, None] if np.ndim(v) else v for v in p)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def window(m, top, left, nh, nw, allow_pad):
    """m[:, top:top+nh, left:left+nw], zero-filled outside m (only allowed at the group input)."""
    h, w = m.shape[1:]
    if not allow_pad:
        assert top >= 0 and left >= 0 and top + nh <= h and left + nw <= w
    pt, pl = max(0, -top), max(0, -left)
    pb, pr = max(0, top + nh - h), max(0, left + nw - w)
    mp = np.pad(m, ((0, 0), (pt, pb), (pl, pr)))
    return mp[:, top + pt : top + pt + nh, left + pl : left + pl + nw]


def extent(c):
    """Spatial extent of a (dilated) kernel."""
    return tuple(c.dilation[ax] * (c.kernel[ax] - 1) + 1 for ax in range(2))


def unpadded(c):
    """The shortcut as the fine-tune graph has it: pads 0 (its skip input is cropped instead)."""
    return None if c is None else replace(c, pads=(0, 0, 0, 0))


def rel_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if a.size else 0.0


def geom(convs):
    """Test's own chain geometry: (K, S, pads) per axis, from first principles."""
    k, s, p = [1, 1], [1, 1], [0, 0, 0, 0]
    for c in convs:
        for ax in range(2):
            k[ax] += c.dilation[ax] * (c.kernel[ax] - 1) * s[ax]
            p[ax] += c.pads[ax] * s[ax]
            p[ax + 2] += c.pads[ax + 2] * s[ax]
            s[ax] *= c.stride[ax]
    return k, s, p


def dense(conv: LinearConv) -> LinearConv:
    """groups -> 1: the block-diagonal kernel written out."""
    o, i, g = conv.out_channels, conv.in_channels, conv.groups
    og, ig = o // g, i // g
    w = np.zeros((o, i, *conv.kernel))
    for k in range(g):
        w[k * og : (k + 1) * og, k * ig : (k + 1) * ig] = conv.weight[k * og : (k + 1) * og]
    return replace(conv, weight=w, groups=1)


def fold_bn(conv, gamma, beta, mean, var, eps) -> LinearConv:
    """BatchNormalization (inference) after the conv."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(eps))
    return fold_affine(conv, scale, np.asarray(beta, np.float64) - np.asarray(mean) * scale)


def fold_affine_input(scale: np.ndarray, shift: np.ndarray, conv: LinearConv) -> LinearConv:
    """Per-input-channel x*scale + shift before the conv (onnxmerge never folds this way).

    Exact only if the conv has zero pads (or the shift is zero): the original pads the
    transformed map with zeros, which the folded conv cannot reproduce on the border.
    """
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    g, o = conv.groups, conv.out_channels
    grp = np.arange(o) // (o // g)
    sc = scale.reshape(g, -1)[grp]  # (O, I/g): the scale of each input a row reads
    sh = shift.reshape(g, -1)[grp]
    bias = conv.bias + np.einsum("oipq,oi->o", conv.weight, sh)
    return replace(conv, weight=conv.weight * sc[:, :, None, None], bias=bias)


def relocate_padding(convs: Sequence[LinearConv]) -> list[LinearConv]:
    """Fine-tune form: the group's whole (stride-scaled) padding on the first conv, 0 elsewhere.

    Merging this stack is exact everywhere. Residual skips inside the group must then read
    their input cropped by skip_crop() with the shortcut's pads set to 0.
    """
    convs = list(convs)
    _, _, pads = merged_geometry(
        [c.kernel for c in convs],
        [c.stride for c in convs],
        [c.dilation for c in convs],
        [c.pads for c in convs],
    )
    return [replace(convs[0], pads=pads)] + [replace(c, pads=(0, 0, 0, 0)) for c in convs[1:]]


def skip_crop(
    convs: Sequence[LinearConv], a: int, b: int, shortcut: LinearConv | None = None
) -> HW:
    """(top, left) offset at which residual (a, b)'s skip reads the relocated position-a map.

    In the fine-tune form every pad sits on the group's first conv, so the map at position
    a > 0 carries X_a = P(convs[a:]) extra rows/cols on top/left and the branch output
    X_b = P(convs[b:]); the shortcut (its pads set to 0) therefore starts
    X_a - S*X_b - p_sc = P(convs[a:b]) - p_sc in. The group input (a = 0) is not padded (the
    first conv pads internally), so there the offset is -(S*X_b + p_sc): negative means
    zero-padding the skip, exact only at the group input; at a > 0 it raises ValueError.
    """
    convs = list(convs)

    def pads_of(sub: list[LinearConv]) -> tuple[HW, HW, Pads]:
        return merged_geometry(
            [c.kernel for c in sub],
            [c.stride for c in sub],
            [c.dilation for c in sub],
            [c.pads for c in sub],
        )

    _, stride, _ = pads_of(convs[a:b])
    _, _, rest = pads_of(convs[b:])
    _, _, x_a = pads_of(convs[a:]) if a > 0 else ((1, 1), (1, 1), (0, 0, 0, 0))
    sp = shortcut.pads if shortcut is not None else (0, 0, 0, 0)
    off = tuple(x_a[k] - stride[k] * rest[k] - sp[k] for k in range(2))
    if a > 0 and min(off) < 0:
        raise ValueError(
            f"shortcut of residual ({a}, {b}) pads beyond the main path: not relocatable"
        )
    return (off[0], off[1])
