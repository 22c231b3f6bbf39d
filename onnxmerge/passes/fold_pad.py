"""Fold zero Pad nodes into the Convs they feed, and make every Conv's padding explicit.

A constant-mode Pad with value 0 on the two spatial axes only is the Conv's own zero padding,
so its amounts add to the Conv `pads`. `auto_pad` SAME_UPPER / SAME_LOWER / VALID become the
explicit pads they stand for, so later code reads one representation.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.graph.ir import const, conv_spec


def spatial_zero_pads(pad: gs.Node) -> tuple[int, int, int, int] | None:
    mode = pad.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        return None
    if "pads" in pad.attrs:  # opset < 11
        amounts = np.asarray(pad.attrs["pads"])
        value = float(pad.attrs.get("value", 0.0))
    else:
        amounts = const(pad.inputs[1]) if len(pad.inputs) > 1 else None
        v = const(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2].name else None
        value = 0.0 if v is None else float(np.asarray(v).reshape(-1)[0])
        if len(pad.inputs) > 3 and pad.inputs[3].name:
            return None  # axes input: rare, not folded
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
        if any(t is out for t in graph.outputs):
            continue
        for conv in users:
            spec = conv_spec(conv)
            if spec is None:
                break
        else:
            for conv in users:
                spec = conv_spec(conv)  # pads of the conv as it stands (auto_pad resolved)
                conv.attrs["pads"] = [p + q for p, q in zip(spec.pads, pads, strict=True)]
                conv.attrs.pop("auto_pad", None)
                conv.inputs[0] = node.inputs[0]
            count += 1
    for node in graph.nodes:
        if node.op == "Conv" and node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            spec = conv_spec(node)
            if spec is not None:
                node.attrs["pads"] = list(spec.pads)
                node.attrs.pop("auto_pad", None)
                count += 1
    return count
