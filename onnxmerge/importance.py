"""Importance: how much the network's output moves when one segment is merged.

For each candidate, that one segment of the original network is replaced by its merged conv
(interior activations removed, pruned convs dropped) and the network is run on calibration
inputs with ONNX Runtime. Distortion, summed over graph outputs (each on its own scale):
- classifier-like outputs (2-D, >= 2 classes): the mean KL(p_original || p_modified), with
  p the softmax of logits, or the output itself where it already is a probability vector,
  plus 1e-3 x the relative error of the log-probabilities (a saturated softmax scores every
  candidate ~0 by KL alone, which would make them all tie);
- anything else (feature maps, detection heads): the relative squared error per channel
  ||a_c - b_c||^2 / ||a_c||^2 (at most 4), averaged over channels, so box coordinates in
  pixels do not drown class scores in 0..1, nor faint ones of 1e-4.
Importance = -distortion, so the unchanged network scores 0 and the DP maximises a sum of
non-positive terms, which keeps it additive over segments (the LayerMerge surrogate).

By default the candidate's conv is the calibrated one (refit by least squares to the original
segment's output on the same calibration inputs, onnxmerge.calibrate), since that is what the
merged network will carry; `calibrate=False` scores plain composition.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from onnxmerge.calibration.capture import Captured, Suffix, apply_conv, capture
from onnxmerge.calibration.fit import Design, geometry, why_not
from onnxmerge.compose import LinearConv
from onnxmerge.graph.conv import conv_proto
from onnxmerge.graph.names import Names

DistortionFn = Callable[[onnx.ModelProto], float]

LOGIT_WEIGHT = 1e-3  # the log-probability term that keeps a saturated softmax informative
CHANNEL_FLOOR = 1e-6  # energy floor (dead channels), relative to the quietest live channel's
CHANNEL_CAP = 4.0  # a channel's relative error counts at most this (|change| = 2 |ref|)
DISTORTION_VERSION = 2  # part of the importance cache key: bump when the measure changes


def log_probabilities(x: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities of a classifier output: log-softmax of logits, or the log of
    what already is a probability vector (rows in [0, 1] summing to 1, e.g. a Softmax at the
    end of the graph), which a second softmax would flatten."""
    if x.min() >= 0 and x.max() <= 1 and np.allclose(x.sum(1), 1.0, atol=1e-3):
        p = np.clip(x, 1e-12, None)
        return np.log(p / p.sum(1, keepdims=True))
    z = x - x.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def output_distortion(ref: np.ndarray, out: np.ndarray) -> float:
    """How far one output moved (0 when equal); see the module docstring.

    Classifier-like (N, K >= 2): mean KL(p_ref || p_out) plus LOGIT_WEIGHT times the relative
    squared error of the row-centred log-probabilities (informative when the softmax
    saturates). Anything else: per channel (axis 1), ||ref_c - out_c||^2 / ||ref_c||^2, at
    most CHANNEL_CAP, averaged over channels, so a head of small numbers (class scores of 1e-4
    next to pixel boxes) counts as much as a large one. The floor that keeps a dead channel
    from dividing by 0 is relative to the quietest live channel, not to the mean (which the
    boxes dominate).
    """
    r, o = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if r.ndim == 2 and r.shape[1] >= 2:
        lr, lo = log_probabilities(r), log_probabilities(o)
        kl = float(np.sum(np.exp(lr) * (lr - lo), axis=1).mean())
        cr, co = lr - lr.mean(1, keepdims=True), lo - lo.mean(1, keepdims=True)
        return kl + LOGIT_WEIGHT * float(np.sum((cr - co) ** 2) / max(np.sum(cr**2), 1e-30))
    r = r.reshape(r.shape[0], r.shape[1], -1) if r.ndim >= 2 else r.reshape(1, 1, -1)
    o = o.reshape(r.shape)
    err = np.sum((r - o) ** 2, axis=(0, 2))
    energy = np.sum(r**2, axis=(0, 2))
    live = energy[energy > 0]
    floor = CHANNEL_FLOOR * float(live.min()) if live.size else 1e-30
    return float(np.mean(np.minimum(err / (energy + floor), CHANNEL_CAP)))


def _distortion(ref: list[list[np.ndarray]], out: list[list[np.ndarray]]) -> float:
    """Mean over inputs of the summed output_distortion over graph outputs.

    `ref[i][k]`, `out[i][k]`: output k on input i (batch 1 each).
    """
    total = 0.0
    for r_list, o_list in zip(ref, out, strict=True):
        total += sum(output_distortion(r, o) for r, o in zip(r_list, o_list, strict=True))
    return total / max(len(ref), 1)


def swap_segment(
    base: onnx.ModelProto, src: str, target: str, lin: LinearConv, name: str
) -> onnx.ModelProto:
    """`base` with `target` computed by one Conv from `src`; nodes left dead are removed.

    The new Conv and its weights get names unused in `base` (starting with `name`).
    """
    m = onnx.ModelProto()
    m.CopyFrom(base)
    g = m.graph
    nodes = [n for n in g.node if target not in n.output]
    dtype = next(
        (onnx.numpy_helper.to_array(t).dtype for t in g.initializer if t.dims and len(t.dims) == 4),
        np.float32,
    )
    node, inits = conv_proto(Names.of_proto(base).fresh(name, "_W", "_B"), src, target, lin, dtype)
    g.initializer.extend(inits)
    nodes.append(node)
    live = {o.name for o in g.output}
    kept = []
    for n in reversed(_toposort(nodes)):
        if any(o in live for o in n.output):
            kept.append(n)
            live.update(n.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    used = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(used)
    del g.value_info[:]
    return m


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    order, state = [], {}

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                state[j] = 2
                order.append(nodes[j])
                continue
            if state.get(j):
                continue
            state[j] = 1
            stack.append((j, True))
            stack.extend(
                (produced[x], False)
                for x in nodes[j].input
                if x in produced and not state.get(produced[x])
            )

    for i in range(len(nodes)):
        visit(i)
    return order


def holdout_split(groups: list[int]) -> tuple[list[int], list[int]]:
    """Feed indices to fit on and to score on: alternate source groups (alternate feeds if all
    share one group)."""
    order = list(dict.fromkeys(groups))
    if len(order) < 2:
        groups, order = list(range(len(groups))), list(range(len(groups)))
    rank = {g: r for r, g in enumerate(order)}
    fit = [i for i, g in enumerate(groups) if rank[g] % 2 == 0]
    return fit, [i for i, g in enumerate(groups) if rank[g] % 2 == 1]


@dataclass
class Job:
    """One candidate to score: segment src -> dst of the base model, its composed conv (lazy).

    `key` names the candidate in the result (a Segment for depth compression).
    """

    key: object
    src: str
    dst: str
    compose: Callable[[], LinearConv]
    name: str = "cand"
    order: tuple = ()  # jobs run sorted by (src, order): shared inputs and prefixes stay warm


class _Fitter:
    """Refits candidates, reusing the Gram matrix of the last few (input, geometry) pairs."""

    def __init__(self, acts: dict[str, np.ndarray], options: dict, keep: int = 4) -> None:
        self.acts, self.keep = acts, keep
        limits = ("max_unknowns", "rows_per_unknown")
        self.limits = {k: v for k, v in options.items() if k in limits}
        self.options = {k: v for k, v in options.items() if k not in limits}
        self.designs: OrderedDict[tuple, Design] = OrderedDict()

    def __call__(self, job: Job, lin: LinearConv) -> LinearConv:
        y = self.acts[job.dst]
        if why_not(lin, y.shape[0] * y.shape[2] * y.shape[3], **self.limits):
            return lin
        key = (job.src, geometry(lin))  # the Gram matrix ignores the output channels
        design = self.designs.pop(key, None)
        if design is None:
            design = Design(lin, self.acts[job.src], **self.options)
        self.designs[key] = design
        while len(self.designs) > self.keep:
            self.designs.popitem(last=False)
        return design.fit(lin, self.acts[job.dst]).conv


def importance_table(
    base: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    jobs: list[Job],
    *,
    calibrate: bool = True,
    fit_options: dict | None = None,
    distortion_fn: DistortionFn | None = None,
    progress: bool = True,
    groups: list[int] | None = None,
) -> dict[object, float]:
    """Importance (-distortion) per job key.

    Default path: the base model runs once with every boundary tensor captured; per distinct
    segment output a suffix model runs the rest of the network from the candidate's conv
    output, so a candidate costs one conv plus a partial forward pass. With `calibrate`, each
    candidate's conv is first refit to the original segment's output (onnxmerge.calibrate) on
    half the feeds and scored on the other half, split by source `groups` (views of one photo
    stay on one side; default: every feed its own group). With `distortion_fn`, each
    candidate's whole swapped model is handed to it instead.
    """
    fit_options = fit_options or {}
    outputs = [o.name for o in base.graph.output]
    ordered = sorted(jobs, key=lambda j: (j.src, j.order))
    dsts = list(dict.fromkeys(j.dst for j in ordered))
    suffixes = {} if distortion_fn else {d: Suffix(base, d) for d in dsts}
    names = {j.src for j in jobs} | set(dsts) | set(outputs)
    names |= {n for s in suffixes.values() for n in s.external}
    need = calibrate or not distortion_fn
    acts = capture(base, feeds, names) if need and jobs else Captured({}, len(feeds))
    # A refit is scored on inputs it was not fitted on: a conv with more unknowns than pixels
    # would otherwise interpolate its own data and look harmless.
    fit_acts, score = acts, acts
    if calibrate and len(feeds) >= 2:
        fit_idx, score_idx = holdout_split(groups or list(range(len(feeds))))
        fit_acts, score = acts.take(fit_idx), acts.take(score_idx)
    offset = distortion_fn(base) if distortion_fn else 0.0
    count = score.count if score else 0
    ref = [[score.feed(o, i) for o in outputs] for i in range(count)]
    out: dict[object, float] = {}
    bar = tqdm(
        total=len(jobs),
        desc="importance",
        unit="cand",
        disable=not progress or not jobs,
        leave=False,
    )
    fitter = _Fitter(fit_acts, fit_options) if calibrate else None
    for job in ordered:
        lin = job.compose()
        lin = fitter(job, lin) if fitter else lin
        if distortion_fn:
            swapped = swap_segment(base, job.src, job.dst, lin, job.name)
            out[job.key] = -(distortion_fn(swapped) - offset)
        else:
            y = apply_conv(lin, score[job.src])
            runs = suffixes[job.dst].run(y.astype(score[job.dst].dtype), score)
            got = [
                [r[o] if o in r else ref[i][k] for k, o in enumerate(outputs)]
                for i, r in enumerate(runs)
            ]
            out[job.key] = -_distortion(ref, got)
        bar.update()
    bar.close()
    return out
