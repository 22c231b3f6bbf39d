"""Calibrated merge: refit a merged conv by ridge least squares on calibration activations.

Pure numpy, no ONNX. A merged conv (weight W0, bias b0, any stride/pads/dilation/groups) is
linear in its parameters: with P the im2col patches of its input x (one row per output pixel,
columns = the group's input channels × kernel taps, plus a 1 for the bias),
    y_g = P_g [W_g; b_g]          for each group g of output channels.
Given the ORIGINAL (non-linear) segment's output Y on the same input, the refit solves per group
    min ||P_g θ - Y_g||² + λ_g ||θ - θ0||²,   λ_g = ridge · mean(diag(P_gᵀ P_g)),
i.e. (G + λ I) θ = Pᵀ Y + λ θ0 with the Gram matrix G = Pᵀ P; `ridge` grows by K/rows when
there are fewer pixels (rows) than unknowns (K). One Gram matrix serves all of a
group's output channels. The ridge pulls toward the composed kernel θ0, which keeps the fit
well posed when there are fewer (or highly correlated) pixels than unknowns, the usual case in
late, small feature maps with few calibration images. On the calibration rows the fit can only
lower the squared error (θ0 is feasible with zero penalty); held-out behaviour is what the
fidelity benchmark measures.

Cost is rows · K² for the Gram matrix plus K³ for the solve (K = unknowns per group), so rows
(output pixels) are subsampled at random to bound the work, keeping at least 2K. A conv with
more than `max_unknowns` unknowns, or fewer than 2 calibration pixels per unknown, is not
fitted (`why_not`; the caller keeps plain composition and says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxmerge.compose import LinearConv

MAX_UNKNOWNS = 3000  # a conv with more unknowns per group is not refit (why_not)


def row_budget(k: int, groups: int = 1) -> int:
    """Rows (output pixels, all images) a fit of k unknowns per group samples at most: rows *
    k^2 work bounded near 1e9, and never fewer than 2k."""
    return max(2 * k, int(1e9 / (k * k * groups)))


def sample_rows(
    pixels: int, budget: int, images: int, rng: np.random.Generator
) -> np.ndarray | None:
    """One image's output pixels to fit on, of `images` sharing `budget` rows: all (None) or
    a sorted random subset of ceil(budget / images) of them."""
    take = min(pixels, max(1, -(-budget // images)))
    return None if take == pixels else np.sort(rng.choice(pixels, take, False))


@dataclass
class Fit:
    """A refit conv, or None with the reason it was not fitted; errors are relative (SSE/||Y||²)."""

    conv: LinearConv | None
    error_before: float = float("nan")
    error_after: float = float("nan")
    rows: int = 0
    reason: str = ""


def patches(lin: LinearConv, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """im2col of one image x (C, H, W) for `lin`: (pixels, groups, C/groups · kh · kw).

    `rows` selects output pixels (flat indices into Ho·Wo); all of them by default.
    """
    c, h, w = x.shape
    kh, kw = lin.kernel
    sy, sx = lin.stride
    dy, dx = lin.dilation
    pt, pl, pb, pr = lin.pads
    ho, wo = lin.out_hw((h, w))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    taps = np.empty((c, kh, kw, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            taps[:, i, j] = xp[
                :,
                i * dy : i * dy + sy * (ho - 1) + 1 : sy,
                j * dx : j * dx + sx * (wo - 1) + 1 : sx,
            ]
    flat = taps.reshape(lin.groups, c // lin.groups * kh * kw, ho * wo)
    if rows is not None:
        flat = flat[:, :, rows]
    return flat.transpose(2, 0, 1)


def geometry(lin: LinearConv) -> tuple:
    """What the patches depend on: everything but the output channels."""
    return (lin.weight.shape[1:], lin.stride, lin.pads, lin.dilation, lin.groups)


class Design:
    """The input side of a fit: patches and Gram matrix of x for one conv geometry.

    Reusable for every conv of the same geometry reading the same x (candidates that share a
    segment start and merged kernel), so the costly Gram and its inverse are built once.
    """

    def __init__(
        self,
        lin: LinearConv,
        x: np.ndarray,
        *,
        ridge: float = 1e-2,
        max_rows: int | None = None,
        seed: int = 0,
    ) -> None:
        self.geometry = geometry(lin)
        g = lin.groups
        k = lin.weight.shape[1] * lin.kernel[0] * lin.kernel[1] + 1
        n = x.shape[0]
        self.out_hw = lin.out_hw(x.shape[2:])
        pixels = self.out_hw[0] * self.out_hw[1]
        if max_rows is None:  # bound the Gram matrix's rows * k^2 work, keep rows >= 2k
            max_rows = row_budget(k, g)
        rng = np.random.default_rng(seed)
        self.rows = [sample_rows(pixels, max_rows, n, rng) for _ in range(n)]
        self.patches = []  # per image (g, r, k), float32 to halve memory
        gram = np.zeros((g, k, k))
        for i in range(n):
            p = patches(lin, np.asarray(x[i], np.float64), self.rows[i]).transpose(1, 0, 2)
            p = np.concatenate([p, np.ones((*p.shape[:2], 1))], axis=2)
            gram += p.transpose(0, 2, 1) @ p
            self.patches.append(p.astype(np.float32))
        self.gram = gram
        self.count = sum(pixels if r is None else len(r) for r in self.rows)
        # Fewer pixels than unknowns: the data cannot pin the kernel down, lean on the prior.
        scale = ridge * max(1.0, k / self.count)
        self.lam = scale * np.maximum(np.einsum("gkk->g", gram) / k, 1e-12)

    def fit(self, lin: LinearConv, y: np.ndarray, errors: bool = False) -> Fit:
        """The ridge fit of `lin` (same geometry) to targets y (N, O, Ho, Wo)."""
        if geometry(lin) != self.geometry:
            raise ValueError("conv geometry differs from the design's")
        g = lin.groups
        og = lin.out_channels // g
        n = len(self.patches)
        if y.shape != (n, lin.out_channels, *self.out_hw):
            raise ValueError(f"target shape {y.shape} != conv output {(n, lin.out_channels)}")
        k = self.gram.shape[1]
        cross = np.zeros((g, k, og))
        sq = 0.0
        for p, rows, yi in zip(self.patches, self.rows, y, strict=True):
            t = np.asarray(yi, np.float64).reshape(g, og, -1)
            t = t if rows is None else t[:, :, rows]
            cross += p.transpose(0, 2, 1).astype(np.float64) @ t.transpose(0, 2, 1)
            sq += float(np.sum(t * t))
        theta0 = np.concatenate(
            [lin.weight.reshape(g, og, k - 1), lin.bias.reshape(g, og, 1)], axis=2
        ).transpose(0, 2, 1)  # (g, k, og)
        lam = self.lam[:, None, None]
        theta = np.linalg.solve(self.gram + lam * np.eye(k), cross + lam * theta0)
        w = theta.transpose(0, 2, 1)  # (g, og, k)
        conv = LinearConv(
            w[:, :, :-1].reshape(lin.weight.shape),
            w[:, :, -1].reshape(-1),
            lin.stride,
            lin.pads,
            lin.dilation,
            lin.groups,
        )
        if not errors:
            return Fit(conv, rows=self.count)
        total = max(sq, 1e-30)

        def sse(th: np.ndarray) -> float:
            quad = float(np.sum((self.gram @ th) * th))
            return quad - 2 * float(np.sum(th * cross)) + sq

        return Fit(conv, sse(theta0) / total, sse(theta) / total, self.count)


def unknowns(lin: LinearConv) -> int:
    """Unknowns per group of a refit: the group's input channels × taps, plus the bias."""
    return lin.weight.shape[1] * lin.kernel[0] * lin.kernel[1] + 1


def why_not(
    lin: LinearConv, pixels: int, max_unknowns: int = MAX_UNKNOWNS, rows_per_unknown: float = 2.0
) -> str:
    """Why `lin` should keep plain composition ('' if it can be refit on `pixels` outputs).

    Too many unknowns costs too much; too few pixels per unknown lets the fit memorize the
    calibration images (seen on MobileNetV2: a 39-conv merge refit on 784 pixels for 1569
    unknowns looked harmless on its own data and broke the network on other photos).
    """
    k = unknowns(lin)
    if k > max_unknowns:
        return f"{k} unknowns per group > {max_unknowns}"
    if pixels < rows_per_unknown * k:
        return f"{pixels} calibration pixels < {rows_per_unknown:g} x {k} unknowns"
    return ""


def fit_conv(
    lin: LinearConv,
    x: np.ndarray,
    y: np.ndarray,
    *,
    ridge: float = 1e-2,
    max_unknowns: int = MAX_UNKNOWNS,
    rows_per_unknown: float = 2.0,
    max_rows: int | None = None,
    seed: int = 0,
) -> Fit:
    """Refit `lin` so that conv(x) ≈ y; x (N, C, H, W) inputs, y (N, O, Ho, Wo) targets."""
    n, _, ho, wo = np.shape(y)
    reason = why_not(lin, n * ho * wo, max_unknowns, rows_per_unknown)
    if reason:
        return Fit(None, reason=reason)
    design = Design(lin, np.asarray(x), ridge=ridge, max_rows=max_rows, seed=seed)
    return design.fit(lin, np.asarray(y), errors=True)
