"""Bypass Identity nodes: their consumers read the Identity's input instead.

Exporters leave Identity between ops (PP-OCRv6 puts one between each conv and its
activation), which would end a chain there. An Identity whose output is a graph output stays
(the output keeps its name).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxmerge.graph.tensors import is_graph_output


def bypass_identities(graph: gs.Graph) -> int:
    """Rewire every consumer of a non-output Identity to its input; return how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if is_graph_output(graph, out):
            continue
        for user in list(out.outputs):
            for i, t in enumerate(user.inputs):  # graphsurgeon's lists take no slice writes
                if t is out:
                    user.inputs[i] = src
        node.outputs.clear()
        count += 1
    return count
