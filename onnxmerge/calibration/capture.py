"""Intermediate activations on calibration inputs, and suffix models that run from one tensor.

Importance and calibration both need the original network's tensors at segment boundaries,
and importance needs "the rest of the network" after a replaced segment. Instead of running a
whole modified network per candidate, the original is run once with every needed tensor as an
extra output (`capture`), and for each distinct segment-output tensor T a suffix model is cut
(`Suffix`): the nodes that depend on T, whose other inputs (skips, side branches) are fed
from the captured originals. Graph outputs that do not depend on T are taken from the
reference run unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx

from onnxmerge.compose import LinearConv
from onnxmerge.graph.conv import conv_proto
from onnxmerge.runtime import session, with_outputs


class Captured(dict):
    """Tensors captured on every feed (batch-1 feeds): name -> an array stacked on the batch
    axis where every feed's value has a leading 1, else the list of per-feed arrays (a tensor
    with no batch axis, such as a detector's anchor grid computed from shapes, is not stacked:
    slicing the stack per feed would corrupt it)."""

    def __init__(self, values: dict, count: int) -> None:
        super().__init__(values)
        self.count = count

    def feed(self, name: str, i: int) -> np.ndarray:
        """The value of `name` on feed i, as that feed produced it."""
        v = self[name]
        return v[i : i + 1] if isinstance(v, np.ndarray) else v[i]

    def take(self, idx: Sequence[int]) -> Captured:
        """The capture restricted to the feeds `idx` (in that order)."""
        idx = list(idx)
        return Captured(
            {
                k: v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]
                for k, v in self.items()
            },
            len(idx),
        )


def capture(model: onnx.ModelProto, feeds: Sequence[dict], names: Iterable[str]) -> Captured:
    """Each named tensor (graph outputs included) over all feeds (see Captured); only the
    nodes they depend on run."""
    names = list(dict.fromkeys(names))
    inputs = {k for f in feeds for k in f}
    wanted = [n for n in names if n not in inputs]
    sess = session(upstream(model, wanted)) if wanted else None
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        values = dict(zip(wanted, sess.run(wanted, feed), strict=True)) if wanted else {}
        for n in names:
            got[n].append(feed[n] if n in feed else values[n])
    return Captured(stack(got), len(feeds))


def ancestors(
    model: onnx.ModelProto, names: Sequence[str], within: set[str] | None = None
) -> list[onnx.NodeProto] | None:
    """The nodes the named tensors depend on, in graph order, following only tensors in
    `within` (all where None). None where one of them has a subgraph: its outer-scope inputs
    are not listed, so the walk would miss them."""
    nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    chosen: set[int] = set()
    todo = list(names)
    while todo:
        k = producer.get(todo.pop())
        if k is not None and k not in chosen:
            chosen.add(k)
            todo.extend(i for i in nodes[k].input if within is None or i in within)
    part = [nodes[k] for k in sorted(chosen)]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in part for a in n.attribute):  # fmt: skip
        return None
    return part


def upstream(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A model with the graph inputs of `model` whose outputs are the named tensors, holding
    only the nodes and initializers they depend on (all of `model`, outputs added, where one
    of them has a subgraph)."""
    g = model.graph
    part = ancestors(model, names)
    if part is None:
        return with_outputs(model, list(names))
    used = {i for n in part for i in n.input}
    inits = {t.name for t in g.initializer}
    m = onnx.ModelProto(ir_version=model.ir_version)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.name = g.name
    m.graph.input.extend(i for i in g.input if i.name not in inits or i.name in used)
    m.graph.node.extend(part)
    m.graph.initializer.extend(t for t in g.initializer if t.name in used)
    m.graph.sparse_initializer.extend(g.sparse_initializer)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return m


def stack(got: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Per-feed values stacked on the batch axis where each has a leading 1 (see Captured)."""
    return {
        n: np.concatenate(v) if all(x.ndim and x.shape[0] == 1 for x in v) else v
        for n, v in got.items()
    }


def conv_model(lin: LinearConv, shape: Sequence[int], dtype=np.float32) -> onnx.ModelProto:
    """A one-Conv model with input "x" of `shape` and output "y"."""
    h = onnx.helper
    elem = h.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node, inits = conv_proto("conv", "x", "y", lin, np.dtype(dtype))
    graph = h.make_graph(
        [node],
        "conv",
        [h.make_tensor_value_info("x", elem, list(shape))],
        [h.make_tensor_value_info("y", elem, None)],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def apply_conv(lin: LinearConv, x: np.ndarray) -> np.ndarray:
    """`lin` applied to a batch with ONNX Runtime, in x's dtype."""
    return session(conv_model(lin, x.shape, x.dtype)).run(None, {"x": x})[0]


class Suffix:
    """The part of `model` downstream of tensor `start`, runnable from captured tensors."""

    def __init__(self, model: onnx.ModelProto, start: str) -> None:
        g = model.graph
        tainted = {start}
        nodes = []
        for node in g.node:  # graph nodes are topologically sorted
            if any(i in tainted for i in node.input):
                nodes.append(node)
                tainted.update(node.output)
        inits = {t.name: t for t in g.initializer}
        produced = {o for n in nodes for o in n.output}
        self.external = list(
            dict.fromkeys(
                i
                for n in nodes
                for i in n.input
                if i and i not in produced and i not in inits and i != start
            )
        )
        self.start = start
        self.outputs = [o.name for o in g.output if o.name in produced]
        self.is_output = any(o.name == start for o in g.output)  # e.g. a detection head
        self._nodes = nodes
        self._inits = list({i: inits[i] for n in nodes for i in n.input if i in inits}.values())
        self._model = model
        self._sess = None

    def _build(self, example: dict[str, np.ndarray]) -> None:
        h = onnx.helper
        inputs = [
            h.make_tensor_value_info(
                n, h.np_dtype_to_tensor_dtype(example[n].dtype), list(example[n].shape)
            )
            for n in [self.start, *self.external]
        ]
        outputs = [o for o in self._model.graph.output if o.name in self.outputs]
        graph = h.make_graph(self._nodes, "suffix", inputs, outputs, self._inits)
        m = h.make_model(graph, opset_imports=self._model.opset_import)
        m.ir_version = self._model.ir_version
        self._sess = session(m)

    def run(self, value: np.ndarray, captured: Captured) -> list[dict[str, np.ndarray]]:
        """Per batch item: the suffix's graph outputs with `start` = value[i:i+1]."""
        results = []
        for i in range(value.shape[0]):
            feed = {self.start: value[i : i + 1]}
            feed.update({n: captured.feed(n, i) for n in self.external})
            got = {self.start: feed[self.start]} if self.is_output else {}
            if self.outputs:
                if self._sess is None:
                    self._build(feed)
                got.update(zip(self.outputs, self._sess.run(self.outputs, feed), strict=True))
            results.append(got)
        return results
