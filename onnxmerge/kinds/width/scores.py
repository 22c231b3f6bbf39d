"""Which channels to keep and what a cut costs in fidelity.

Channel order (SP-LAMP, Pan et al. 2023, after LAMP, Lee et al. 2021): n_j, the summed squared
weights of every producer row that writes channel j of a group (BatchNormalization is already
folded into the conv by normalization, so its scale counts). A group cut to w keeps its w
largest n_j.

Importance of a group cut to w channels (higher is better, <= 0):
- "splamp" (data-free): over the ascending norms n_(1) <= ... <= n_(C), the score of the u-th
  is SP(u) = n_(u) / sum_{v >= u} n_(v) (the strongest scores 1); keeping the top w is worth
  V(w) = the sum of their scores, and the cut's importance is V(w) - V(C) (with channels
  kept by OBS instead: the scores of those kept minus all);
- "measured" (default): minus the output distortion (importance.output_distortion, the same
  as depth's) of the network with only that group cut and its consumer convs refit on the
  other half of the calibration sources (as the output will be), run on the held-out half
  against the original; a user's `distortion_fn` replaces it. Only the part of the network
  the cut changed is run, from the original's tensors (calibration.baseline).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.conv import conv_weight
from onnxmerge.graph.tensors import const
from onnxmerge.kinds.width.groups import Group
from onnxmerge.kinds.width.rules import name_of
from onnxmerge.kinds.width.selection import kept


def producer_rows(node: gs.Node) -> np.ndarray:
    """(out, fan-in) output rows of a Conv or ConvTranspose (group 1), or of a Gemm / MatMul
    with a constant weight."""
    if node.op == "Conv":
        w = conv_weight(node)[0]
        return np.asarray(w, np.float64).reshape(w.shape[0], -1)
    if node.op == "ConvTranspose":  # (C_in, C_out, ...): output channels on axis 1
        w = np.asarray(const(node.inputs[1]), np.float64)
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    w = np.asarray(const(node.inputs[1]), np.float64)
    return w if node.op == "Gemm" and node.attrs.get("transB", 0) else w.T


def channel_norms(graph: gs.Graph, group: Group) -> np.ndarray:
    """n_j (shape (group.width,)): summed squared producer weights writing channel j."""
    nodes = {name_of(n): n for n in graph.nodes}
    norms = np.zeros(group.width)
    for name, offset in group.producers:
        rows = producer_rows(nodes[name])[offset : offset + group.width]
        norms += (rows**2).sum(1)
    return norms


def strongest(norms: np.ndarray, width: int, blocks: int = 1) -> tuple[int, ...]:
    """The `width` channels of largest norm, ascending (ties: lower index first); with
    `blocks` > 1, the width / blocks largest of each of that many equal blocks."""
    order = np.argsort(-np.asarray(norms), kind="stable")
    return kept([int(i) for i in order[::-1]], width, blocks)


def splamp_scores(norms: np.ndarray) -> np.ndarray:
    """SP(j) for each channel j (shape (C,)): n_j over the sum of the norms not below it, in
    the ascending order (ties: higher index first, so that `strongest`, which prefers the
    lower index, keeps the w largest scores)."""
    norms = np.asarray(norms, np.float64)
    order = np.argsort(-norms, kind="stable")[::-1]
    ascending = norms[order]
    tail = np.cumsum(ascending[::-1])[::-1]  # sum_{v >= u} n_(v)
    scores = np.zeros_like(norms)
    scores[order] = np.divide(ascending, tail, out=np.zeros_like(tail), where=tail > 0)
    return scores


def joint_scorer(analysis, kind, scoring):
    """A function: candidates -> -distortion of the network with all of them cut together,
    its consumer convs refit (with `scoring.calibrate`) on the fit half of the calibration
    inputs and scored on the held-out half (the user's `distortion_fn` where given)."""
    from onnxmerge.calibration.baseline import Baseline
    from onnxmerge.calibration.network import refit_merged
    from onnxmerge.importance import _distortion, holdout_split

    fit, held = holdout_split(scoring.groups)
    original = analysis.reference
    # The original's tensors on each half; a cut's network runs only from where it changed.
    fitting = Baseline(original, [scoring.feeds[i] for i in fit])
    scored = Baseline(original, [scoring.feeds[i] for i in held] or scoring.feeds)
    outputs = [o.name for o in original.graph.output]
    targets: dict = {}  # the original's tensors on the fit half, for the current cuts' refits

    def score(items) -> float:
        model, refits = analysis.rewrite(
            lambda g, m, names: kind.apply(g, m, tuple(items), "merged", names), check=False
        )
        fitting.trim()  # the widths of one group share their frontier: keep the last one's
        scored.trim()
        if scoring.calibrate and refits and fitting.feeds:
            kept = {r.node.name: r.kept_out for r in refits}
            lost = {r.node.name: r.lost for r in refits if r.lost is not None}
            # Widths of one group share their consumers: keep only what this cut needs.
            needed = {r.node.outputs[0].name for r in refits} | {v.tensor for v in lost.values()}
            for name in set(targets) - needed:
                del targets[name]
            model, _ = refit_merged(
                original,
                model,
                kept,
                fitting.feeds,
                scoring.fit_options,
                targets=targets,
                baseline=fitting,
                lost=lost,
            )
        if scoring.distortion_fn is not None:
            return -float(scoring.distortion_fn(model))
        ref, out = scored.tensors(outputs), scored.capture(model, outputs)
        count = range(len(scored.feeds))
        return -_distortion(
            [[ref.feed(n, i) for n in outputs] for i in count],
            [[out.feed(n, i) for n in outputs] for i in count],
        )

    return score


def measured_importance(analysis, kind, candidates: list, scoring) -> dict:
    """-distortion of the network with only each candidate's group cut (module docstring)."""
    from tqdm import tqdm

    score = joint_scorer(analysis, kind, scoring)
    bar = tqdm(candidates, desc="importance", unit="cut", leave=False, disable=not scoring.progress)
    return {c: score((c,)) for c in bar}
