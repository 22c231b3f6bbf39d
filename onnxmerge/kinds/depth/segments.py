"""A segment of a matched chain as numbers: its convs, residuals and composed conv.

`segment_parts` reads the convs of (s, e] (identities where pruned; an activation removed
inside the segment leaves its linear replacement, match.regions, folded into the conv before
it) and the residuals the segment folds; `segment_linear` composes them (compose.py);
`segment_io` names the tensors the merged conv reads and writes.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxmerge.chain import Segment
from onnxmerge.compose import LinearConv, fold_affine, identity, merge_segment
from onnxmerge.graph.conv import read_linear
from onnxmerge.match import MatchedChain


def _conv_at(mc: MatchedChain, seg: Segment, p: int) -> LinearConv:
    """Conv p as it acts inside `seg`: pruned -> identity; a removed affine activation folded."""
    spec = mc.chain.conv(p)
    lin = read_linear(mc.slots[p - 1].conv) if p in seg.kept else identity(spec.in_channels)
    affine = mc.slots[p - 1].act_affine
    if p < seg.end and affine is not None:
        lin = fold_affine(lin, *affine)
    return lin


def segment_parts(mc: MatchedChain, seg: Segment) -> tuple[list[LinearConv], list[tuple]]:
    """The float64 convs (identities where pruned) and residual tuples of `seg`."""
    chain, s, e = mc.chain, seg.start, seg.end
    convs = [_conv_at(mc, seg, p) for p in range(s + 1, e + 1)]
    residuals = []
    for r in chain.fused_residuals(s, e):
        sc = read_linear(mc.shortcuts[r.end]) if r.shortcut is not None else None
        item = (r.start - s, r.end - s, _adjusted(sc, r, chain.conv(r.start + 1).in_channels))
        residuals.append(item + ((r.crop[0], r.crop[1]),) if any(r.crop) else item)
    return convs, residuals


def segment_linear(mc: MatchedChain, seg: Segment, memo: dict | None = None) -> LinearConv:
    """The composed float64 conv of `seg`.

    A lone kept conv with nothing folded (the others pruned to identities) is that conv as it
    is, dilation included: what candidates.signature prices, and cheaper than its undilated
    kernel. `memo` shares composed prefixes between segments of this chain starting at s.
    """
    convs, residuals = segment_parts(mc, seg)
    if mc.chain.lone_conv(seg.start, seg.end, seg.kept):
        return convs[seg.kept[0] - seg.start - 1]
    labels = [(mc.chain.name, p, p in seg.kept) for p in range(seg.start + 1, seg.end + 1)]
    return merge_segment(convs, residuals, memo=memo, labels=labels)


def _adjusted(sc: LinearConv | None, r, channels: int) -> LinearConv | None:
    """A skip that zero-pads its input (fine-tune graphs) is a conv with those pads."""
    if not any(r.pad):
        return sc
    base = sc if sc is not None else identity(channels)
    pads = tuple(int(p + q) for p, q in zip(base.pads, r.pad, strict=True))
    return LinearConv(base.weight, base.bias, base.stride, pads, base.dilation, base.groups)


def segment_io(mc: MatchedChain, s: int, e: int) -> tuple[gs.Tensor, gs.Tensor]:
    """The tensor segment (s, e] reads and the one its merged conv writes.

    The output is conv e's output, or the Add's output when the residual ending at e is folded
    into the kernel; the activation and any explicit Add after it stay as they are.
    """
    src = mc.input if s == 0 else mc.slots[s - 1].output
    last = mc.slots[e - 1]
    folds_end = any(r.end == e for r in mc.chain.fused_residuals(s, e))
    return src, (last.pre_act if folds_end else last.conv.outputs[0])


def rewrites_nothing(mc: MatchedChain, seg: Segment) -> bool:
    """The segment is one unchanged conv with nothing folded into it: no rewrite needed.

    Stricter than Segment.unchanged (distortion 0): a single conv that folds the identity
    residual around it is unchanged in what it computes but still becomes a new Conv.
    """
    return seg.unchanged and not mc.chain.fused_residuals(seg.start, seg.end)
