"""Which channels of a group to keep, from calibration data: greedy structured OBS.

Pure numpy, no ONNX. A group's channels feed one or more linear consumers (convs, Gemms) c,
each with weight W_c (O_c x K_c, its input columns and a last bias column) over features X_c
(rows x K_c: im2col patches and a 1). Cutting channel j deletes the columns B_c(j) of every
consumer (k_h * k_w taps for a conv, `unit` features for a Gemm after a Flatten, one for a
1x1 conv); the consumer is then refit by least squares on what is left (calibration/fit.py).
The squared error that cut leaves at consumer c after the optimal refit of its other weights
is the Optimal Brain Surgeon saliency (Hassibi & Stork 1993) of the block B (the structured
form of Kurtic et al. 2022 and Frantar & Alistarh's OBC 2022):

    dE_c(B) = tr( W_B (H^-1_BB)^-1 W_B^T ),   H = X^T X + lam I,   W_B = W[:, B],

and the refit that achieves it moves the remaining weights R; the inverse Hessian of what is
left is the Schur complement (the matrices shrink as channels go):

    W_R    <- W_R - W_B (H^-1_BB)^-1 H^-1_BR
    H^-1_RR <- H^-1_RR - H^-1_RB (H^-1_BB)^-1 H^-1_BR

`obs_order` removes, `step` channels at a time, those of smallest summed dE_c, updating every
consumer after each removal, so later choices see the compensation earlier ones got: a
channel another one can stand in for goes early, one that carries information nothing else
has goes late. Keeping the last w of the order is the data-aware replacement of keeping the w
largest weight norms (scores.strongest), which measures how big a channel's producer is, not
what the consumers lose without it. Cost per consumer: K^3 for the inverse and about
C * b * K^2 / 3 for the updates (b columns per channel), in C / step passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Consumer:
    """One consumer of a group's channels: `weight` (O x K) over its input columns (the bias
    last), `columns` (C x b) the columns channel j of the group occupies, and either
    `gram` (K x K) = X^T X over its input features with a trailing constant-1 column (a
    consumer the calibration refits), or `blocks` (C x b x b), X_B^T X_B of each channel's
    columns, centred where the consumer's bias takes the lost mean (one it does not refit:
    a cut then costs tr(W_B blocks W_B^T), whatever else goes). Both are sums over the rows
    (not means), so consumers add up in squared error."""

    weight: np.ndarray
    columns: np.ndarray
    gram: np.ndarray | None = None
    blocks: np.ndarray | None = None


def obs_order(
    consumers: list[Consumer], channels: int, ridge: float = 1e-2, step: int = 1
) -> list[int]:
    """Every channel 0..channels-1, in the order greedy OBS removes them (first: least needed).

    `ridge` (relative to the mean diagonal of each Gram matrix) keeps H invertible when
    features are collinear or rows few; `step` channels go per update (ties: lower index
    first). Raises ValueError when a consumer's shapes do not fit `channels` channels.
    """
    states, fixed = [], np.zeros(channels)
    for c in consumers:
        weight = np.asarray(c.weight, np.float64)
        cols = np.asarray(c.columns, np.int64).reshape(channels, -1)
        if (c.gram is None) == (c.blocks is None):
            raise ValueError("a consumer needs exactly one of gram and blocks")
        if c.gram is None:
            wb = weight[:, cols]  # (O, C, b)
            fixed += np.einsum("ocb,cbd,ocd->c", wb, np.asarray(c.blocks, np.float64), wb)
            continue
        gram = np.asarray(c.gram, np.float64)
        if gram.shape != (weight.shape[1],) * 2:
            raise ValueError(f"gram {gram.shape} and weight {weight.shape} do not match")
        lam = ridge * max(float(np.trace(gram)) / len(gram), 1e-12)
        hinv = np.linalg.inv(gram + lam * np.eye(len(gram)))
        states.append([weight.copy(), hinv, cols])
    alive = np.arange(channels)
    order: list[int] = []
    while len(alive):
        saliency = fixed[alive].copy()
        for weight, hinv, cols in states:
            blocks = cols[alive]  # (n, b)
            hbb = hinv[blocks[:, :, None], blocks[:, None, :]]  # (n, b, b)
            wb = weight[:, blocks]  # (O, n, b)
            saliency += np.einsum("onb,nbd,ond->n", wb, _inv(hbb), wb)
        take = np.argsort(saliency, kind="stable")[: max(1, step)]
        gone = alive[take]
        order += [int(j) for j in gone]
        alive = np.delete(alive, take)
        for state in states if len(alive) else []:
            weight, hinv, cols = state
            b = cols[gone].reshape(-1)
            rest = np.ones(len(hinv), bool)
            rest[b] = False  # the removed columns leave the matrices: later updates shrink
            m = _inv(hinv[np.ix_(b, b)][None])[0]
            row = hinv[np.ix_(b, rest)]
            state[0] = weight[:, rest] - weight[:, b] @ m @ row
            state[1] = hinv[np.ix_(rest, rest)] - hinv[np.ix_(rest, b)] @ m @ row
            # Column k's position in the shrunk matrices is the number of kept columns before
            # it; removed channels' entries go stale (never read again).
            state[2] = (np.cumsum(rest) - 1)[cols]
    return order


def kept(order: list[int], width: int, blocks: int = 1) -> tuple[int, ...]:
    """The `width` channels a removal order (`obs_order`'s: first out first) removes last,
    ascending. With `blocks` > 1 the channels fall into that many equal consecutive blocks
    (a grouped conv's groups) and each keeps width / blocks: the order is followed, skipping
    a channel whose block has lost its share. ValueError when `blocks` divides neither the
    channel count nor `width`."""
    if blocks == 1:
        return tuple(sorted(order[len(order) - width :])) if width else ()
    if len(order) % blocks or width % blocks:
        raise ValueError(f"{blocks} blocks do not split {len(order)} -> {width} channels")
    size, quota = len(order) // blocks, (len(order) - width) // blocks
    lost = np.zeros(blocks, np.int64)
    gone = set()
    for j in order:
        if lost[j // size] < quota:
            lost[j // size] += 1
            gone.add(j)
    return tuple(j for j in range(len(order)) if j not in gone)


def _inv(blocks: np.ndarray) -> np.ndarray:
    """Inverses of a stack of small symmetric blocks (pseudo-inverse where singular)."""
    try:
        return np.linalg.inv(blocks)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(blocks, hermitian=True)
