"""Replace a segment (s, e] of a matched chain by one Conv with the composed kernel.

The new Conv reads the position-s tensor and writes the tensor conv e's output fed (or, when
the residual ending at e is folded into the kernel, the Add's output), so the activation and
any explicit residual Add after it stay as they were; the interior nodes become dead and the
caller's cleanup() removes them. Pruned convs enter the composition as identities.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.chain import Segment
from onnxmerge.compose import LinearConv
from onnxmerge.graph.conv import conv_node
from onnxmerge.graph.names import Names
from onnxmerge.kinds.depth.segments import segment_io, segment_linear
from onnxmerge.match import MatchedChain


def merge_group(
    graph: gs.Graph,
    mc: MatchedChain,
    seg: Segment,
    names: Names,
    merged: LinearConv | None = None,
) -> gs.Node:
    """Rewire `seg` to one new Conv (returned); `merged` overrides the composed kernel."""
    src, target = segment_io(mc, seg.start, seg.end)
    lin = merged if merged is not None else segment_linear(mc, seg)
    dtype = np.asarray(mc.slots[seg.start].conv.inputs[1].values).dtype
    name = names.fresh(f"{mc.chain.name}_merged_{seg.start}_{seg.end}", "_W", "_B")
    target.inputs.clear()
    node = conv_node(name, src, target, lin, dtype)
    graph.nodes.append(node)
    return node
