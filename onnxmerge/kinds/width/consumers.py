"""What each channel group's consumers see on calibration data, for the OBS channel order.

`channel_orders` runs the normalized original once per calibration feed, capturing the input
of every consumer (Conv, ConvTranspose, Gemm, MatMul) of the given groups, and accumulates per
consumer either the Gram matrix of its im2col features (a dense conv calibration will refit:
fit.why_not; a ConvTranspose as the conv it equals on its zero-inserted input) or each group
channel's block of it (one it will not refit as a dense conv: convs of too many unknowns or
too few pixels, grouped convs, which it refits per group, as the dense conv they equal, Gemm
and MatMul heads), centred where a bias takes the lost inputs' mean (calibration/compensate.py:
not a MatMul without an Add after it). Output pixels are subsampled as the refit samples them
(fit.row_budget) and weighted up to the whole image, so consumers at different resolutions add
up as the squared error each would carry. selection.obs_order turns them into each group's
removal order."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmerge.calibration.capture import upstream
from onnxmerge.calibration.fit import (
    MAX_UNKNOWNS,
    patches,
    row_budget,
    sample_rows,
    unknowns,
    why_not,
)
from onnxmerge.compose import densify
from onnxmerge.conv_transpose import zero_insert
from onnxmerge.graph.conv import conv1d_spec, conv_spec, read_linear, read_transpose
from onnxmerge.importance import holdout_split
from onnxmerge.importance_cache import ImportanceCache
from onnxmerge.kinds.width.groups import Group, channel_groups
from onnxmerge.kinds.width.rules import name_of
from onnxmerge.kinds.width.scores import producer_rows
from onnxmerge.kinds.width.selection import Consumer, obs_order

WORK = 2e8  # inverse-Hessian entries the greedy updates of one group may rewrite in all


class _Stats:
    """Running statistics of one consumer's input features for one group."""

    def __init__(self, node: gs.Node, offsets: list[int], width: int, unit: int) -> None:
        """`offsets`: where the group sits in the node's input (twice for a Concat of a tensor
        with itself: one channel then owns both places' columns)."""
        self.node = node
        self.stride = None  # a ConvTranspose's: its input is zero-inserted (conv_transpose)
        if node.op in ("Conv", "ConvTranspose"):
            if node.op == "Conv":
                self.lin = read_linear(node)
            else:
                self.lin, self.stride = read_transpose(node)
            # A grouped conv is seen as the dense one it equals (zeros between its groups);
            # its refit stays within each group, so it is ordered as one not refit.
            grouped = self.lin.groups > 1
            self.lin = densify(self.lin) if grouped else self.lin
            unit = self.lin.kernel[0] * self.lin.kernel[1]  # taps per channel
            w = self.lin.weight
            self.weight = np.concatenate([w.reshape(len(w), -1), self.lin.bias[:, None]], 1)
            offsets = [o * unit for o in offsets]
            self.refit = not grouped and unknowns(self.lin) <= MAX_UNKNOWNS
        else:  # Gemm / MatMul: (out, features), offsets already in features
            self.lin = None
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            self.weight = alpha * producer_rows(node)
            self.refit = False
        per = np.arange(width)[:, None] * unit + np.arange(unit)
        self.columns = np.concatenate([o + per for o in offsets], 1)  # (width, b)
        # Calibration moves a lost input's mean into a bias: a Conv's, a Gemm's, or the
        # constant of an Add after a MatMul (compensate.py). A bare MatMul loses it too.
        self.centred = node.op != "MatMul" or _bias_after(node)
        k, b = self.weight.shape[1], self.columns.shape[1]
        self.gram = np.zeros((k, k)) if self.refit else None
        self.sums = np.zeros((width, b))
        self.outer = np.zeros((width, b, b))
        self.rows = 0
        self.rng = np.random.default_rng(0)

    def add(self, x: np.ndarray, images: int) -> None:
        """One feed's input tensor (1, C, H, W), (1, C, L) or (1, F), of `images` in all."""
        if self.lin is None:
            feats = np.asarray(x, np.float64).reshape(1, -1)
            pixels = 1
        else:
            x = x if x.ndim == 4 else x[:, :, None]  # a 1-D conv in its height-1 form
            x = x if self.stride is None else zero_insert(x, self.stride)
            k = self.weight.shape[1]
            ho, wo = self.lin.out_hw(x.shape[2:])
            pixels = ho * wo
            rows = sample_rows(pixels, row_budget(k), images, self.rng)
            feats = patches(self.lin, np.asarray(x[0], np.float64), rows)[:, 0, :]
            feats = np.concatenate([feats, np.ones((len(feats), 1))], 1)
        scale = pixels / len(feats)  # the sampled rows stand for the whole image
        if self.gram is not None:
            self.gram += scale * (feats.T @ feats)
        else:
            block = feats[:, self.columns]  # (rows, C, b)
            self.sums += scale * block.sum(0)
            self.outer += scale * np.einsum("rcb,rcd->cbd", block, block)
        self.rows += pixels

    def consumer(self) -> Consumer:
        """The statistics for obs_order: the Gram matrix where the refit will run."""
        sums, outer = self.sums, self.outer
        if self.gram is not None:
            if not why_not(self.lin, self.rows):
                return Consumer(self.weight, self.columns, gram=self.gram)
            cols = self.columns  # too few pixels to refit: its per-channel blocks only
            sums, outer = self.gram[cols, -1], self.gram[cols[:, :, None], cols[:, None, :]]
        mean = sums / max(self.rows, 1) if self.centred else np.zeros_like(sums)
        blocks = outer - self.rows * np.einsum("cb,cd->cbd", mean, mean)
        return Consumer(self.weight, self.columns, blocks=blocks)


def _bias_after(node: gs.Node) -> bool:
    """`node`'s output feeds only an Add with a constant operand (tf2onnx's dense bias)."""
    users = node.outputs[0].outputs
    return (
        len(users) == 1
        and users[0].op == "Add"
        and any(isinstance(t, gs.Constant) for t in users[0].inputs)
    )


def channel_orders(
    graph: gs.Graph,
    reference: onnx.ModelProto,
    groups: list[Group],
    feeds: list[dict],
    ridge: float = 1e-2,
) -> dict[int, list[int]]:
    """{group id: its channels, least needed first} (selection.obs_order) for every group
    with a Conv / ConvTranspose / Gemm / MatMul consumer; `reference` is `graph` exported
    (same tensor names), `feeds` batch-1 input dicts; a 1-D conv counts in its height-1 form,
    a ConvTranspose as the conv it equals on its zero-inserted input. Groups without one (read
    only by 3-D convs or grouped ConvTranspose) are left out (keep by norm)."""
    from onnxmerge.runtime import session

    nodes = {name_of(n): n for n in graph.nodes}
    stats: dict[int, list[_Stats]] = {}
    for g in groups:
        units = {m.tensor: m.unit for m in g.members}
        offsets: dict[str, list[int]] = {}
        for name, offset in g.consumers:
            node = nodes[name]  # 3-D convs, grouped ConvTranspose: left to the norms
            readable = conv_spec(node) or conv1d_spec(node) or read_transpose(node)
            if node.op in ("Gemm", "MatMul") or readable:
                offsets.setdefault(name, []).append(offset)
        for name, at in offsets.items():
            unit = units.get(nodes[name].inputs[0].name, 1)
            stats.setdefault(g.id, []).append(_Stats(nodes[name], at, g.width, unit))
    if not stats or not feeds:
        return {}
    wanted = sorted({s.node.inputs[0].name for ss in stats.values() for s in ss})
    sess = session(upstream(reference, wanted))
    for feed in feeds:
        values = dict(zip(wanted, sess.run(wanted, feed), strict=True))
        for ss in stats.values():
            for s in ss:
                s.add(values[s.node.inputs[0].name], len(feeds))
    orders = {}
    widths = {g.id: g.width for g in groups}
    for gid, ss in stats.items():
        work = widths[gid] * sum(s.weight.shape[1] ** 2 for s in ss if s.refit)
        step = max(1, int(np.ceil(work / WORK)))  # channels per update
        orders[gid] = obs_order([s.consumer() for s in ss], widths[gid], ridge, step)
    return orders


def cached_orders(analysis, align: int, scoring, cache_dir) -> tuple[dict[int, list[int]], int]:
    """(each prunable group's OBS channel order, how many were computed now, not cached):
    channel_orders on the fit half of the calibration feeds (the half the output's refit
    uses), cached with importance."""
    fit, _ = holdout_split(scoring.groups)
    feeds = [scoring.feeds[i] for i in fit]
    ridge = scoring.fit_options.get("ridge", 1e-2)
    options = {"ridge": ridge, "selection": "obs", "align": align}
    cache = ImportanceCache(cache_dir, analysis.reference_sha256, feeds, True, options)
    groups = [g for g in channel_groups(analysis.graph, align) if g.prunable]
    orders = {int(k): v for k, v in cache.orders().items()}
    todo = [g for g in groups if g.id not in orders and g.consumers]
    if todo:
        new = channel_orders(analysis.graph, analysis.reference, todo, feeds, ridge)
        cache.put_orders({str(k): v for k, v in new.items()})
        orders.update(new)
    return orders, len(todo)
