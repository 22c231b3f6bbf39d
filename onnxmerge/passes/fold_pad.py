"""Fold zero Pad nodes into the Convs they feed, and make every Conv's padding explicit.

A Pad is the Conv's own zero padding only when its mode is `constant`, its value is a known
0 (absent, or a constant 0: a value fed from a graph input is unknown), its amounts are
constant, non-negative and touch only the two spatial axes, and it has no `axes` input; then
its amounts add to the Conv `pads`. `auto_pad` SAME_UPPER / SAME_LOWER / VALID become the
explicit pads they stand for (graph.conv.geometry), in 2-D and 1-D convs, so later code and
every runtime read one representation; a SAME_* that would need negative padding stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.conv import attr_str, auto_pad_of, conv1d_spec, conv_spec
from onnxmerge.graph.tensors import const, is_graph_output


def _given(node: gs.Node, i: int) -> bool:
    return len(node.inputs) > i and bool(node.inputs[i].name)


def spatial_zero_pads(pad: gs.Node) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a Pad that is zero padding of H and W only, else None."""
    if attr_str(pad.attrs.get("mode", "constant")) != "constant":
        return None
    if "pads" in pad.attrs:  # opset < 11
        amounts = np.asarray(pad.attrs["pads"])
        value = float(pad.attrs.get("value", 0.0))
    else:
        amounts = const(pad.inputs[1]) if _given(pad, 1) else None
        if _given(pad, 3):
            return None  # an axes input: rare, not folded
        if _given(pad, 2):
            v = const(pad.inputs[2])
            if v is None or np.asarray(v).size != 1:
                return None  # a value we cannot see is not a known 0
            value = float(np.asarray(v).reshape(()))
        else:
            value = 0.0
    if amounts is None or value != 0.0 or amounts.size != 8:
        return None
    a = [int(x) for x in amounts.reshape(-1)]
    if any(x < 0 for x in a) or a[0] or a[1] or a[4] or a[5]:
        return None
    return (a[2], a[3], a[6], a[7])


def fold_pad_into_conv(graph: gs.Graph) -> int:
    """Fold foldable Pads into their consumer Convs; rewrite auto_pad as explicit pads."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Pad":
            continue
        pads = spatial_zero_pads(node)
        out = node.outputs[0]
        users = list(out.outputs)
        if pads is None or not users or any(u.op != "Conv" for u in users):
            continue
        if is_graph_output(graph, out) or any(u.inputs[0] is not out for u in users):
            continue
        specs = [conv_spec(conv) for conv in users]
        if any(spec is None for spec in specs):
            continue
        for conv, spec in zip(users, specs, strict=True):
            conv.attrs["pads"] = [p + q for p, q in zip(spec.pads, pads, strict=True)]
            conv.attrs.pop("auto_pad", None)
            conv.inputs[0] = node.inputs[0]
        count += 1
    for node in graph.nodes:
        if node.op == "Conv" and auto_pad_of(node.attrs) != "NOTSET":
            spec, one_d = conv_spec(node), False
            if spec is None:  # a 1-D conv: its pads are the width's of its height-1 form
                spec, one_d = conv1d_spec(node), True
            if spec is not None:
                t, left, b, right = spec.pads
                node.attrs["pads"] = [left, right] if one_d else [t, left, b, right]
                node.attrs.pop("auto_pad", None)
                count += 1
    return count
