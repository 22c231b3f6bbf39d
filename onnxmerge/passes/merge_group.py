"""Replace a segment (s, e] of a matched chain by one Conv with the composed kernel.

The new Conv reads the position-s tensor and writes the tensor conv e's output fed (or, when
the residual ending at e is folded into the kernel, the Add's output), so the activation and
any explicit residual Add after it stay as they were; the interior nodes become dead and the
caller's cleanup() removes them. Pruned convs enter the composition as identities.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.compose import LinearConv, identity, merge_segment
from onnxmerge.graph.ir import conv_weight
from onnxmerge.match import MatchedChain


def linear(node: gs.Node, spec) -> LinearConv:
    w, b = conv_weight(node)
    return LinearConv(
        np.asarray(w, np.float64),
        np.asarray(b, np.float64),
        spec.stride,
        spec.pads,
        spec.dilation,
        spec.groups,
    )


def segment_parts(mc: MatchedChain, s: int, e: int, kept: tuple[int, ...]):
    """The float64 convs (identities where pruned) and residual tuples of segment (s, e]."""
    chain = mc.chain
    convs = [
        linear(mc.slots[p - 1].conv, chain.conv(p))
        if p in kept
        else identity(chain.conv(p).in_channels)
        for p in range(s + 1, e + 1)
    ]
    residuals = []
    for r in chain.fused_residuals(s, e):
        sc = linear(mc.shortcuts[r.end], r.shortcut) if r.shortcut is not None else None
        item = (r.start - s, r.end - s, _adjusted(sc, r, chain.conv(r.start + 1).in_channels))
        residuals.append(item + ((r.crop[0], r.crop[1]),) if any(r.crop) else item)
    return convs, residuals


def segment_linear(
    mc: MatchedChain, s: int, e: int, kept: tuple[int, ...], memo: dict | None = None
) -> LinearConv:
    """The composed float64 conv of segment (s, e] keeping the convs at `kept`.

    A lone kept conv with nothing folded (the others pruned to identities) is that conv as it
    is, dilation included: what candidates.signature prices, and cheaper than its undilated
    kernel. `memo` shares composed prefixes between segments of this chain starting at s.
    """
    convs, residuals = segment_parts(mc, s, e, kept)
    if len(kept) == 1 and not residuals:
        return convs[kept[0] - s - 1]
    labels = [(mc.chain.name, p, p in kept) for p in range(s + 1, e + 1)]
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


def merge_group(
    graph: gs.Graph,
    mc: MatchedChain,
    s: int,
    e: int,
    kept: tuple[int, ...],
    merged: LinearConv | None = None,
) -> gs.Node:
    """Rewire segment (s, e] to one Conv; `merged` overrides the composed kernel (calibration)."""
    chain = mc.chain
    src, target = segment_io(mc, s, e)
    lin = merged if merged is not None else segment_linear(mc, s, e, kept)
    dtype = np.asarray(mc.slots[s].conv.inputs[1].values).dtype
    name = f"{chain.name}_merged_{s}_{e}"
    node = gs.Node(
        "Conv",
        name=name,
        attrs={
            "kernel_shape": [int(k) for k in lin.weight.shape[2:]],
            "strides": [int(x) for x in lin.stride],
            "pads": [int(x) for x in lin.pads],
            "dilations": [int(x) for x in lin.dilation],
            "group": int(lin.groups),
        },
        inputs=[
            src,
            gs.Constant(f"{name}_W", lin.weight.astype(dtype)),
            gs.Constant(f"{name}_B", lin.bias.astype(dtype)),
        ],
    )
    target.inputs.clear()
    node.outputs = [target]
    graph.nodes.append(node)
    return node
