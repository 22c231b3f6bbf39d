"""Rewrite a segment into its fine-tune form: linear, pruned, padding on the first conv.

Interior activations are removed and pruned convs bypassed, but the kept convs stay separate
so the network can be trained; the group's whole padding moves to its first conv (the first
kept one, or a doubling conv before it, below; the others get pads 0), so after training
`onnxmerge fuse` merges it exactly.

Margins. With the padding hoisted, the map at relative position i is larger than nominal by
m_i per side: m_n = 0 and m_i = p_{i+1} + s_{i+1} * m_{i+1} (pads and strides of conv i+1).
Position 0 (the group input) is nominal, as is every position before the group's first conv
(physical margin 0 there, m_i from its output on). A skip (a, b) through a shortcut of stride S and
pads P must then read its input with need = P + S * phys_b - phys_a extra rows per side:
positive is zero padding (a Pad, or the shortcut conv's own pads), negative a crop (Slice).
An identity skip is S = 1, P = 0.

An activation with its own trailing affine (match.regions) leaves that affine when removed: it
folds into the conv before it, or, where that conv is pruned, becomes a 1x1 depthwise Conv
(weight = scale, bias = shift), named CHAIN_affine_P, a chain position like the doubling conv
below (and the group's first conv when it comes first).

An identity residual whose convs are all pruned would be Add(x, x): a pointwise op that
`onnxmerge fuse` cannot merge. It is written as what it is, a 1x1 depthwise Conv of weight 2
(trainable, and merged back like any other conv): one more chain position in the fine-tune
graph, named CHAIN_doubled_END. When it comes before the group's first kept conv, it is the
group's first conv and takes the group's padding (padding after it would put zeros where the
merged conv sees its trained bias, so the merge would not be exact at the border).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import Segment
from onnxmerge.compose import LinearConv, fold_affine
from onnxmerge.graph.conv import conv_weight, set_weights
from onnxmerge.graph.names import Names
from onnxmerge.match import MatchedChain

_INT64_MAX = np.iinfo(np.int64).max


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new


def _margins(pads: list, strides: list) -> list[tuple[int, int, int, int]]:
    m = [(0, 0, 0, 0)]
    for p, s in zip(reversed(pads), reversed(strides), strict=True):
        prev = m[0]
        m.insert(0, tuple(p[k] + s[k % 2] * prev[k] for k in range(4)))
    return m


def _slice(graph: gs.Graph, x: gs.Tensor, crop, names: Names, base: str) -> gs.Tensor:
    t, l, b, r = crop
    name = names.fresh(f"{base}_crop", "_starts", "_ends", "_axes")
    out = gs.Variable(name, dtype=x.dtype)
    ends = [-b if b else _INT64_MAX, -r if r else _INT64_MAX]
    graph.nodes.append(
        gs.Node(
            "Slice",
            name=name,
            inputs=[
                x,
                gs.Constant(f"{name}_starts", np.array([t, l], np.int64)),
                gs.Constant(f"{name}_ends", np.array(ends, np.int64)),
                gs.Constant(f"{name}_axes", np.array([2, 3], np.int64)),
            ],
            outputs=[out],
        )
    )
    return out


def _pad(graph: gs.Graph, x: gs.Tensor, pad, names: Names, base: str) -> gs.Tensor:
    t, l, b, r = pad
    name = names.fresh(f"{base}_pad", "_pads")
    out = gs.Variable(name, dtype=x.dtype)
    amounts = np.array([0, 0, t, l, 0, 0, b, r], np.int64)
    graph.nodes.append(
        gs.Node(
            "Pad",
            name=name,
            inputs=[x, gs.Constant(f"{name}_pads", amounts)],
            attrs={"mode": "constant"},
            outputs=[out],
        )
    )
    return out


def _double(graph: gs.Graph, mc: MatchedChain, end: int, pads: list[int], names: Names) -> None:
    """Replace the Add of a fully pruned identity residual, Add(x, x), by a Conv computing 2x."""
    add = mc.slots[end - 1].add
    src = add.inputs[0]
    if add.inputs[1] is not src:  # the skip is aligned (a fine-tune graph of a fine-tune graph)
        return
    channels = mc.chain.conv(end).out_channels
    dtype = np.asarray(mc.slots[end - 1].conv.inputs[1].values).dtype
    name = names.fresh(f"{mc.chain.name}_doubled_{end}", "_W", "_B")
    conv = gs.Node(
        "Conv",
        name=name,
        attrs={"kernel_shape": [1, 1], "group": int(channels), "pads": list(pads)},
        inputs=[
            src,
            gs.Constant(f"{name}_W", np.full((channels, 1, 1, 1), 2.0, dtype)),
            gs.Constant(f"{name}_B", np.zeros(channels, dtype)),
        ],
        outputs=list(add.outputs),
    )
    add.outputs.clear()
    graph.nodes.append(conv)


def _fold_removed_affine(mc: MatchedChain, p: int, names: Names) -> None:
    """Conv p absorbs the affine its removed activation leaves (match.regions)."""
    conv, affine = mc.slots[p - 1].conv, mc.slots[p - 1].act_affine
    if affine is None:
        return
    w, b = conv_weight(conv)  # geometry is irrelevant here (and changes in this pass)
    lin = fold_affine(LinearConv(w, b, groups=int(conv.attrs.get("group", 1))), *affine)
    set_weights(conv, lin, names, f"{conv.name or 'conv'}_affine")


def _affine_conv(graph: gs.Graph, mc: MatchedChain, p: int, pads: list[int], names: Names) -> None:
    """The affine a removed activation leaves after a pruned conv, as a 1x1 depthwise Conv
    (weight scale, bias shift) between the pre-activation tensor and the position tensor."""
    slot = mc.slots[p - 1]
    scale, shift = slot.act_affine
    dtype = np.asarray(slot.conv.inputs[1].values).dtype
    name = names.fresh(f"{mc.chain.name}_affine_{p}", "_W", "_B")
    out = gs.Variable(name, dtype=slot.output.dtype)
    graph.nodes.append(
        gs.Node(
            "Conv",
            name=name,
            attrs={"kernel_shape": [1, 1], "group": int(len(scale)), "pads": list(pads)},
            inputs=[
                slot.pre_act,
                gs.Constant(f"{name}_W", scale.reshape(-1, 1, 1, 1).astype(dtype)),
                gs.Constant(f"{name}_B", shift.astype(dtype)),
            ],
            outputs=[out],
        )
    )
    _replace_uses(slot.output, out)


def finetune_group(graph: gs.Graph, mc: MatchedChain, seg: Segment, names: Names) -> None:
    """Rewrite `seg` of `mc` in place into its fine-tune form (dead nodes left for cleanup)."""
    chain, s, e, kept = mc.chain, seg.start, seg.end, seg.kept
    rel_kept = [p - s for p in kept]
    pads = [chain.conv(p).pads if p in kept else (0, 0, 0, 0) for p in range(s + 1, e + 1)]
    strides = [chain.conv(p).stride if p in kept else (1, 1) for p in range(s + 1, e + 1)]
    m = _margins(pads, strides)
    fused = chain.fused_residuals(s, e)
    doubled = [  # fully pruned identity residuals with none inside: Add(x, x) -> Conv 2x
        r
        for r in fused
        if r.shortcut is None
        and not any(r.start < p <= r.end for p in kept)
        and not any(q != r and r.start <= q.start and q.end <= r.end for q in fused)
    ]
    # Affines left by removed activations after pruned convs: 1x1 depthwise convs there.
    affines = [p for p in range(s + 1, e) if p not in kept and mc.slots[p - 1].act_affine]
    # The conv that takes the padding: the first kept, doubling or affine one.
    first = min(rel_kept + [r.end - s for r in doubled] + [p - s for p in affines])

    def physical(i: int):
        return m[i] if i >= first else (0, 0, 0, 0)

    for r in fused:
        a, b = r.start - s, r.end - s
        slot = mc.slots[r.end - 1]
        src = mc.input if r.start == 0 else mc.slots[r.start - 1].output
        name = f"{chain.name}_skip_{r.start}_{r.end}"  # a base: _pad / _slice make it fresh
        if r.shortcut is None:
            # A doubled residual's conv reads src alone: its skip needs no alignment.
            need = (
                (0,) * 4
                if r in doubled
                else tuple(physical(b)[k] - physical(a)[k] for k in range(4))
            )
            if max(need) > 0:
                x = _pad(graph, src, [max(v, 0) for v in need], names, name)
            else:
                x = src
            if min(need) < 0:
                x = _slice(graph, x, [max(-v, 0) for v in need], names, name)
            slot.add.inputs[[i for i, t in enumerate(slot.add.inputs) if t is slot.skip][0]] = x
        else:
            sc = mc.shortcuts[r.end]
            st = r.shortcut.stride
            need = tuple(
                r.shortcut.pads[k] + st[k % 2] * physical(b)[k] - physical(a)[k] for k in range(4)
            )
            crop = [max(-v, 0) for v in need]
            x = _slice(graph, src, crop, names, name) if min(need) < 0 else src
            sc.inputs[0] = x
            sc.attrs["pads"] = [max(v, 0) for v in need]
    for p in range(s + 1, e):
        slot = mc.slots[p - 1]
        if p in affines:
            _affine_conv(graph, mc, p, list(m[first - 1]) if p - s == first else [0] * 4, names)
        elif slot.act:
            _replace_uses(slot.output, slot.pre_act)
            if p in kept:
                _fold_removed_affine(mc, p, names)
    for p in range(s + 1, e + 1):
        conv = mc.slots[p - 1].conv
        if p not in kept:
            _replace_uses(conv.outputs[0], conv.inputs[0])
        else:
            conv.attrs["pads"] = list(m[first - 1]) if p - s == first else [0, 0, 0, 0]
            conv.attrs.pop("auto_pad", None)
    for r in doubled:
        pads = list(m[first - 1]) if r.end - s == first else [0, 0, 0, 0]
        _double(graph, mc, r.end, pads, names)
