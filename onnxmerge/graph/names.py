"""Fresh names: every node, tensor and initializer onnxmerge adds is unique in the graph.

A user's graph may already hold any name onnxmerge would generate (`chain0_merged_0_2_W`, or
one from an earlier onnxmerge run), and two tensors of one name silently rewire a graph.
`Names` knows every name in use and hands out `base`, `base_1`, `base_2`, ... as needed.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


class Names:
    """Names in use in a graph (nodes, tensors, initializers); `fresh` returns unused ones."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken: set[str] = set(taken or ())

    @classmethod
    def of_graph(cls, graph: gs.Graph) -> Names:
        """Every node and tensor name of a graphsurgeon graph."""
        return cls({n.name for n in graph.nodes} | set(graph.tensors()))

    @classmethod
    def of_proto(cls, model: onnx.ModelProto) -> Names:
        """Every node, value, initializer and graph input/output name of a model."""
        g = model.graph
        taken = {n.name for n in g.node} | {t.name for t in g.initializer}
        taken |= {name for n in g.node for name in (*n.input, *n.output)}
        taken |= {v.name for v in (*g.input, *g.output, *g.value_info)}
        return cls(taken)

    def fresh(self, base: str, *suffixes: str) -> str:
        """An unused name starting with `base`, such that `name + s` is unused for every s.

        The returned name and its suffixed forms are marked as used.
        """
        name, i = base, 0
        while any(name + s in self.taken for s in ("", *suffixes)):
            i += 1
            name = f"{base}_{i}"
        self.taken.update(name + s for s in ("", *suffixes))
        return name
