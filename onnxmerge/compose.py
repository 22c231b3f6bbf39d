"""Numeric composition of linear 2-D convolutions into one conv (pure numpy, float64).

Convention (ONNX/PyTorch cross-correlation). A conv with weight W (O, I/g, kh, kw), bias b,
stride s, dilation d, pads (top, left, bottom, right) = (pt, pl, pb, pr) and g groups computes,
per axis, y[o, Y] = b[o] + sum_{c in group(o), p} W[o, c, p] * x[c, s*Y + d*p - pt], reading
zero outside the input.

Composition (B after A, no padding between them). Substituting A into B:
    z[o, Y] = b'[o] + sum_{i, t} W[o, i, t] * x[i, sA*sB*Y + t - pA]
with, after materializing A's dilation as zeros (undilate, extent KA = dA*(kA-1)+1),
    W[o, i, t] = sum_{c, p} WB[o, c, p] * WA[c, i, t - sA*dB*p]     (zero outside WA's support)
    b'[o]      = bB[o] + sum_{c, p} WB[o, c, p] * bA[c].
So B's taps are spread by A's stride (and B's own dilation): K = KA + sA*dB*(kB-1), merged
stride sA*sB, dilation 1. For a chain, K = 1 + sum_j d_j*(k_j-1)*prod_{i<j} s_i.

Pads. Padding B's input by pB rows is, in input coordinates, sA*pB rows, so the merged pads are
the stride-scaled sums P = pA + sA*pB per side (prod of earlier strides in a chain); the merged
output has the same size as the stack: floor((floor(N/sA) + m)/sB) == floor((N + sA*m)/(sA*sB)).

Why direct merging is only interior-exact. The original stack zero-pads B's input *after* A's
bias; the merged conv sees A's response to padded zeros there (bias and partial sums). Output
pixels whose receptive field touches the padding of any conv after the first differ; that band
has width w_k = ceil((w_{k-1} + p_k)/s_k) per side (border_width). Padding relocation (the
fine-tune form, passes/finetune_form.py) moves the whole P onto the first conv and gives every later
conv pads 0; intermediate maps are then larger than nominal, bias propagates as a constant
through valid convs, and the merge is exact everywhere.

Groups. A grouped conv is block-diagonal between proportional channel chunks. B (gB groups)
after A (gA groups) is block-diagonal with gcd(gA, gB) groups; the contraction is done per
sub-chunk of the lcm(gA, gB) refinement of the middle channels, so depthwise chains never
densify (depthwise after depthwise stays depthwise, depthwise multipliers survive, depthwise
then dense becomes dense). regroup() finds the largest exact group count of any kernel.

Residuals. x -> main(x) + branch(x) is one conv when both have the same stride: align their
windows (main reads S*Y - Pm + t, branch S*Y - pb + u, so u sits at t = u + Pm - pb) and add the
kernels and biases. An identity skip is a 1x1 stride-1 branch: +1 on the channel diagonal at
tap (P_top, P_left) of the main's merged pads, the tap that reads the output pixel's own input
pixel. A k x k shortcut with stride S lands at the same aligned offset. If the branch sticks out
of the main's window, the main kernel grows by zero taps and its pads by the same amount (exact:
zero taps read nothing, output grid unchanged). Nested residuals fold innermost first.

BatchNorm and per-channel affine ops after a conv (fold_affine): W*scale,
b*scale + shift, with scale = gamma/sqrt(var+eps), shift = beta - mean*scale for BN. Exact: they
act after the conv's zero padding. (Before a conv they would be exact only without padding, so
onnxmerge never folds them that way.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import gcd

import numpy as np

from onnxmerge.geometry import HW, Pads, out_hw, pair


@dataclass
class LinearConv:
    """One linear conv (weights + geometry); pads ordered (top, left, bottom, right)."""

    weight: np.ndarray  # (O, I // groups, kh, kw)
    bias: np.ndarray  # (O,)
    stride: HW = (1, 1)
    pads: Pads = (0, 0, 0, 0)
    dilation: HW = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        if self.weight.ndim != 4:
            raise ValueError(f"weight must be 4-D (O, I/g, kh, kw), got shape {self.weight.shape}")
        self.bias = np.asarray(self.bias, dtype=np.float64).reshape(-1)
        self.stride, self.dilation = pair(self.stride), pair(self.dilation)
        self.pads = tuple(int(p) for p in self.pads)  # type: ignore[assignment]
        self.groups = int(self.groups)
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"bias shape {self.bias.shape} != ({self.weight.shape[0]},)")
        if len(self.pads) != 4 or min(self.pads) < 0:
            raise ValueError(f"pads must be 4 non-negative ints, got {self.pads}")
        if min(self.stride + self.dilation) < 1 or self.groups < 1:
            raise ValueError("stride, dilation and groups must be >= 1")
        if self.weight.shape[0] % self.groups:
            raise ValueError(f"out channels {self.weight.shape[0]} not divisible by groups")

    @property
    def in_channels(self) -> int:
        """Input channels (all groups)."""
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        """Output channels."""
        return self.weight.shape[0]

    @property
    def kernel(self) -> HW:
        """(kh, kw)."""
        return (self.weight.shape[2], self.weight.shape[3])

    def out_hw(self, in_hw: HW) -> HW:
        """Output spatial size for an input of size in_hw (ONNX Conv formula)."""
        return out_hw(in_hw, self.kernel, self.stride, self.dilation, self.pads)


def identity(channels: int) -> LinearConv:
    """The identity as a 1x1 stride-1 conv, kept depthwise so composing it never densifies."""
    return LinearConv(np.ones((channels, 1, 1, 1)), np.zeros(channels), groups=channels)


def _regroup_weight(w: np.ndarray, o: int, i: int, g_old: int, g_new: int) -> np.ndarray:
    """Re-express a g_old-grouped weight with g_new groups (entries outside the new blocks
    are dropped, so refining is exact only when they are zero; coarsening is always exact)."""
    ig_old, ig_new = i // g_old, i // g_new
    rows = np.arange(o)
    start_new = (rows // (o // g_new)) * ig_new
    start_old = (rows // (o // g_old)) * ig_old
    local = start_new[:, None] + np.arange(ig_new)[None, :] - start_old[:, None]
    valid = (local >= 0) & (local < ig_old)
    idx = np.clip(local, 0, ig_old - 1)[:, :, None, None]
    taken = np.take_along_axis(w, idx, axis=1)
    return np.where(valid[:, :, None, None], taken, 0.0)


def _with_groups(conv: LinearConv, g: int) -> LinearConv:
    w = _regroup_weight(conv.weight, conv.out_channels, conv.in_channels, conv.groups, g)
    return replace(conv, weight=w, groups=g)


def densify(conv: LinearConv) -> LinearConv:
    """The same conv with one group: its weight (O, I, kh, kw), zero between the groups."""
    return _with_groups(conv, 1)


def undilate(conv: LinearConv) -> LinearConv:
    """Dilation materialized as zero taps: extent d*(k-1)+1, dilation (1, 1)."""
    (dh, dw), (kh, kw) = conv.dilation, conv.kernel
    if (dh, dw) == (1, 1):
        return conv
    w = np.zeros(conv.weight.shape[:2] + (dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    w[:, :, ::dh, ::dw] = conv.weight
    return replace(conv, weight=w, dilation=(1, 1))


def _connectivity(conv: LinearConv) -> np.ndarray:
    """(O, I) bool: which output channel reads which input channel with a non-zero tap."""
    o, i, g = conv.out_channels, conv.in_channels, conv.groups
    ig = i // g
    conn = np.zeros((o, i), dtype=bool)
    cols = ((np.arange(o) // (o // g)) * ig)[:, None] + np.arange(ig)[None, :]
    conn[np.arange(o)[:, None], cols] = np.any(conv.weight != 0, axis=(2, 3))
    return conn


def regroup(conv: LinearConv) -> LinearConv:
    """The largest g (dividing I and O) whose block-diagonal form holds the kernel exactly.

    Composition only knows the structural group count; weights may be finer (e.g. a dense
    kernel that is really depthwise), and a finer group count is cheaper to run.
    """
    o, i = conv.out_channels, conv.in_channels
    conn = _connectivity(conv)
    total = int(conn.sum())
    n = gcd(o, i)
    for g in sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True):
        if g == conv.groups:
            return conv
        blocks = conn.reshape(g, o // g, g, i // g)
        if int(np.einsum("jajb->", blocks.astype(np.int64))) == total:
            return _with_groups(conv, g)
    return conv


def fold_affine(conv: LinearConv, scale: np.ndarray, shift: np.ndarray) -> LinearConv:
    """Per-output-channel y*scale + shift after the conv (exact: no padding in between)."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    w = conv.weight * scale[:, None, None, None]
    return replace(conv, weight=w, bias=conv.bias * scale + shift)


def _is_identity(conv: LinearConv) -> bool:
    return (
        conv.kernel == (1, 1)
        and conv.stride == (1, 1)
        and not any(conv.pads)
        and conv.groups == conv.in_channels == conv.out_channels
        and bool(np.all(conv.weight == 1))
        and not np.any(conv.bias)
    )


def compose(first: LinearConv, second: LinearConv) -> LinearConv:
    """second(first(x)) as one conv (valid composition; pads become stride-scaled sums)."""
    if first.out_channels != second.in_channels:
        raise ValueError(
            f"channel mismatch: first gives {first.out_channels}, second takes {second.in_channels}"
        )
    if _is_identity(second):  # a pruned conv: nothing to compute
        return undilate(first)
    if _is_identity(first):
        return undilate(second)
    a, b = undilate(first), second
    ga, gb, c = a.groups, b.groups, a.out_channels
    g = gcd(ga, gb)
    lcm = ga * gb // g
    o, i = b.out_channels, a.in_channels
    ob, ia, cl = o // gb, i // ga, c // lcm
    (kah, kaw), (kbh, kbw) = a.kernel, b.kernel
    (sah, saw), (dbh, dbw) = a.stride, b.dilation
    kh, kw = kah + sah * dbh * (kbh - 1), kaw + saw * dbw * (kbw - 1)
    # Middle channels split into lcm sub-chunks; sub-chunk l lies in one A group and one B group.
    # Per sub-chunk l: (taps of A x inputs, middle) @ (middle, outputs of B); spatial axes come
    # before channels so each tap's shifted window add touches contiguous blocks.
    wa = a.weight.reshape(lcm, cl, ia, kah, kaw).transpose(0, 3, 4, 2, 1)
    wa = np.ascontiguousarray(wa).reshape(lcm, kah * kaw * ia, cl)
    wb = b.weight.reshape(gb, ob, lcm // gb, cl, kbh, kbw).transpose(4, 5, 0, 2, 3, 1)
    wb = np.ascontiguousarray(wb).reshape(kbh, kbw, lcm, cl, ob)
    acc = np.zeros((lcm, kh, kw, ia, ob))
    for p in range(kbh):
        for q in range(kbw):
            u, v = sah * dbh * p, saw * dbw * q
            part = np.matmul(wa, wb[p, q]).reshape(lcm, kah, kaw, ia, ob)
            acc[:, u : u + kah, v : v + kaw] += part
    # Scatter sub-chunk l into (its group chunk, its B group, its A group) of the result.
    sub = np.arange(lcm)
    beta, alpha = sub // (lcm // gb), sub // (lcm // ga)
    chunk = beta // (gb // g)
    idx = (chunk, beta % (gb // g), slice(None), alpha - chunk * (ga // g))
    out = np.zeros((g, gb // g, ob, ga // g, ia, kh, kw))
    vals = acc.transpose(0, 4, 3, 1, 2)
    if len(set(zip(beta.tolist(), alpha.tolist(), strict=True))) == lcm:
        out[idx] = vals
    else:  # several sub-chunks share both groups: sum them
        np.add.at(out, idx, vals)
    wsum = b.weight.sum(axis=(2, 3)).reshape(gb, ob, c // gb)
    bias = b.bias + np.einsum("goc,gc->go", wsum, a.bias.reshape(gb, c // gb)).reshape(o)
    (at, al, ab, ar), (bt, bl, bb, br) = a.pads, b.pads
    pads = (at + sah * bt, al + saw * bl, ab + sah * bb, ar + saw * br)
    stride = (sah * b.stride[0], saw * b.stride[1])
    return LinearConv(out.reshape(o, i // g, kh, kw), bias, stride, pads, (1, 1), g)


def add_parallel(
    main: LinearConv, branch: LinearConv, in_hw: HW | None = None, shift: HW = (0, 0)
) -> LinearConv:
    """x -> main(x) + branch(x) as one conv on main's output grid.

    The branch reads its input offset by `shift` (top, left) rows/cols (the fine-tune form's
    crop; negative = zero-padded). Raises ValueError if strides or channel counts differ, or
    (when in_hw is given) if the two outputs differ in size there. A branch reaching outside
    main's window grows main's kernel and pads by zero taps, which is exact.
    """
    if main.stride != branch.stride:
        raise ValueError(f"cannot add branches with strides {main.stride} and {branch.stride}")
    if (main.in_channels, main.out_channels) != (branch.in_channels, branch.out_channels):
        raise ValueError("branches must read and write the same channel counts")
    if in_hw is not None and main.out_hw(in_hw) != branch.out_hw(in_hw):
        raise ValueError(f"branch outputs differ at input {in_hw}: not the same output grid")
    m, br = undilate(main), undilate(branch)
    (kh, kw), (bh, bw) = m.kernel, br.kernel
    # Branch tap u reads x[S*Y - pb + shift + u]; main tap t reads x[S*Y - Pm + t].
    off_h = m.pads[0] - br.pads[0] + shift[0]
    off_w = m.pads[1] - br.pads[1] + shift[1]
    grow_t, grow_l = max(0, -off_h), max(0, -off_w)
    grow_b, grow_r = max(0, off_h + bh - kh), max(0, off_w + bw - kw)
    g = gcd(m.groups, br.groups)
    m, br = _with_groups(m, g), _with_groups(br, g)
    w = np.zeros(m.weight.shape[:2] + (kh + grow_t + grow_b, kw + grow_l + grow_r))
    w[:, :, grow_t : grow_t + kh, grow_l : grow_l + kw] += m.weight
    u, v = off_h + grow_t, off_w + grow_l
    w[:, :, u : u + bh, v : v + bw] += br.weight
    t, l, b, r = m.pads
    pads = (t + grow_t, l + grow_l, b + grow_b, r + grow_r)
    return LinearConv(w, m.bias + br.bias, m.stride, pads, (1, 1), g)


def _check_residuals(n: int, residuals: Sequence[tuple]) -> None:
    spans = [(int(r[0]), int(r[1])) for r in residuals]
    for a, b in spans:
        if not 0 <= a < b <= n:
            raise ValueError(f"residual ({a}, {b}) outside positions 0..{n}")
    for a, b in spans:
        for c, d in spans:
            if a < c < b < d:
                raise ValueError(f"residuals ({a}, {b}) and ({c}, {d}) cross (not laminar)")


def merge_segment(
    convs: Sequence[LinearConv],
    residuals: Sequence[tuple] = (),
    in_hw: HW | None = None,
    memo: dict | None = None,
    labels: Sequence | None = None,
) -> LinearConv:
    """The whole segment (convs in order, residuals folded innermost first) as one conv.

    Residual (a, b, sc) adds sc(position a) (sc None = identity) to the output of convs[b-1];
    an optional 4th element (top, left) says the skip reads its input from that offset (the
    fine-tune form's crop, see skip_crop; negative = zero-padded). in_hw (segment input size)
    only enables output-size checks (skipped for cropped skips).
    The result has direct-form pads, dilation 1, and the largest exact group count.

    `memo` (a dict the caller owns) with `labels` (one hashable per conv, naming it and its
    pruned/kept state) reuses top-level prefixes across segments that start at the same place:
    the composed prefix up to a boundary depends only on the convs and the residual blocks
    folded before it, which is the key.
    """
    convs = list(convs)
    n = len(convs)
    if n == 0:
        raise ValueError("empty segment")
    _check_residuals(n, residuals)
    sizes: list[HW | None] = [in_hw]
    for cv in convs:
        sizes.append(None if sizes[-1] is None else cv.out_hw(sizes[-1]))

    def parts(lo: int, hi: int) -> list[tuple[int, int, bool]]:
        """The (start, end, is_block) steps of block (lo, hi]: convs or nested residual blocks."""
        out, pos = [], lo
        while pos < hi:
            ends = [
                int(r[1])
                for r in residuals
                if r[0] == pos and r[1] <= hi and (pos, r[1]) != (lo, hi)
            ]
            end = max(ends) if ends else pos + 1
            out.append((pos, end, bool(ends)))
            pos = end
        return out

    def block(lo: int, hi: int) -> LinearConv:
        steps = parts(lo, hi)
        use_memo = memo is not None and labels is not None and (lo, hi) == (0, n)

        def key(i: int) -> tuple:  # the prefix of steps[:i]
            end = steps[i - 1][1]
            return (tuple(labels[:end]), tuple(st for st in steps[:i] if st[2]))

        acc: LinearConv | None = None
        first = 0
        if use_memo:
            for i in range(len(steps), 0, -1):
                if key(i) in memo:
                    acc, first = memo[key(i)], i
                    break
        for i in range(first, len(steps)):
            a, b, is_block = steps[i]
            part = block(a, b) if is_block else convs[a]
            acc = part if acc is None else compose(acc, part)
            if use_memo:  # before any residual over the whole block: still a pure prefix
                memo[key(i + 1)] = acc
        assert acc is not None
        for r in residuals:
            if (r[0], r[1]) == (lo, hi):
                sc = r[2] if r[2] is not None else identity(convs[lo].in_channels)
                shift = pair(r[3]) if len(r) > 3 else (0, 0)
                acc = add_parallel(acc, sc, sizes[lo] if len(r) == 3 else None, shift)
        return acc

    return regroup(undilate(block(0, n)))


def border_width(convs: Sequence[LinearConv], residuals: Sequence[tuple] = ()) -> Pads:
    """Bands (top, left, bottom, right) of the output where the direct merge may differ.

    Padding of every conv after the first, and of a shortcut that does not read the segment
    input, reads zeros in the original but the extended linear map in the merged conv; the band
    grows as w_k = ceil((w_{k-1} + p_k)/s_k). Bottom/right are upper bounds (stride flooring).
    0 when all those pads are 0.
    """
    convs = list(convs)
    w = [(0, 0, 0, 0)]
    for k, cv in enumerate(convs, start=1):
        pads = cv.pads if k > 1 else (0, 0, 0, 0)
        cur = _band(w[-1], pads, cv.stride)
        for r in residuals:
            if int(r[1]) == k:
                a = int(r[0])
                sc = r[2] if r[2] is not None else identity(cv.out_channels)
                sp = sc.pads if a > 0 else (0, 0, 0, 0)
                cur = tuple(max(x, y) for x, y in zip(cur, _band(w[a], sp, sc.stride), strict=True))
        w.append(cur)  # type: ignore[arg-type]
    return w[-1]


def _band(w: Pads, pads: Pads, stride: HW) -> Pads:
    s = (stride[0], stride[1], stride[0], stride[1])
    return tuple(-(-(w[j] + pads[j]) // s[j]) for j in range(4))  # type: ignore[return-value]
