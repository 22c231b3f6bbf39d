"""A modified copy's tensors, computed from the original network's where the two agree.

Width importance scores each candidate cut by refitting the convs that consume the cut
channels and running the network on held-out inputs. Run whole, that is one network run per
refit conv and one per score on every feed: on ResNet-50, 1.75 s a candidate and 80% of the
width stage's time. A cut changes a few nodes; upstream of them every tensor is the
original's. A `Baseline` keeps the original's tensors on fixed feeds (captured on demand, by
name) and, for a modified copy, runs only its *changed* part:

- a node is unchanged when the original has a node writing the same first output with the
  same op, domain, inputs, outputs, attributes and initializer values (bytes), and none of
  its inputs is changed; every other node, and everything downstream of one, is changed;
- a changed tensor is computed by the changed nodes it depends on, in a small model whose
  inputs (the frontier) are unchanged tensors, fed from the original's values; an unchanged
  tensor is the original's.

The result equals running the copy whole (tests/test_baseline.py checks it against
capture.capture on random cuts), up to float reassociation inside ONNX Runtime. Copies whose
changed part has a subgraph attribute (If, Loop, Scan: inputs taken from the outer scope) are
run whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx

from onnxmerge.calibration.capture import Captured, ancestors, capture, stack
from onnxmerge.runtime import session


class Baseline:
    """The original network's tensors on `feeds` (batch-1 input dicts), kept by name.

    `tensors(names)` captures what is missing in one run of the original; `capture(model,
    names)` computes a modified copy's tensors from them (module docstring). `trim()` drops
    what was not asked for since the last trim (a caller scoring many similar copies trims
    before each, keeping the frontier the previous one used).
    """

    def __init__(self, original: onnx.ModelProto, feeds: Sequence[dict]) -> None:
        self.original = original
        self.feeds = list(feeds)
        self._known: dict[str, np.ndarray | list] = {}
        self._used: set[str] = set()
        self._nodes = {n.output[0]: n for n in original.graph.node if n.output}
        self._inits = {t.name: t for t in original.graph.initializer}

    def tensors(self, names: Iterable[str]) -> Captured:
        """The original's named tensors (graph inputs included) on every feed."""
        names = list(dict.fromkeys(names))
        missing = [n for n in names if n not in self._known]
        if missing:
            self._known.update(capture(self.original, self.feeds, missing))
        self._used.update(names)
        return Captured({n: self._known[n] for n in names}, len(self.feeds))

    def trim(self) -> None:
        """Forget the tensors not asked for since the last trim."""
        for name in set(self._known) - self._used:
            del self._known[name]
        self._used = set()

    def changed(self, model: onnx.ModelProto) -> set[str]:
        """The tensors of `model` whose values may differ from the original's."""
        inits = {t.name: t for t in model.graph.initializer}
        dirty: set[str] = set()
        for node in model.graph.node:
            if any(i in dirty for i in node.input) or not self._same(node, inits):
                dirty.update(o for o in node.output if o)
        return dirty

    def capture(self, model: onnx.ModelProto, names: Iterable[str]) -> Captured:
        """`model`'s named tensors on every feed; `model` is a modified copy of the original
        (tensor names kept where nodes were kept)."""
        names = list(dict.fromkeys(names))
        dirty = self.changed(model)
        clean = [n for n in names if n not in dirty]
        values: dict[str, np.ndarray | list] = dict(self.tensors(clean)) if clean else {}
        wanted = [n for n in names if n in dirty]
        if wanted:
            part = ancestors(model, wanted, within=dirty)  # the changed nodes they need
            if part is None:
                values.update(capture(model, self.feeds, wanted))
            else:
                values.update(self._run(part, model, wanted))
        return Captured({n: values[n] for n in names}, len(self.feeds))

    def _run(self, part: list[onnx.NodeProto], model: onnx.ModelProto, wanted: list[str]):
        inits = {t.name: t for t in model.graph.initializer}
        inside = {o for n in part for o in n.output} | set(inits)
        frontier = list(dict.fromkeys(i for n in part for i in n.input if i and i not in inside))
        base = self.tensors(frontier)
        first = {n: base.feed(n, 0) for n in frontier}
        h = onnx.helper
        graph = h.make_graph(
            part,
            "changed",
            [
                h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                for n, v in first.items()
            ],
            [onnx.ValueInfoProto(name=n) for n in wanted],
            list({i: inits[i] for n in part for i in n.input if i in inits}.values()),
        )
        sub = h.make_model(graph, opset_imports=model.opset_import)
        sub.ir_version = model.ir_version
        sess = session(sub)
        got: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        for i in range(len(self.feeds)):
            feed = first if i == 0 else {n: base.feed(n, i) for n in frontier}
            for n, v in zip(wanted, sess.run(wanted, feed), strict=True):
                got[n].append(v)
        return stack(got)

    def _same(self, node: onnx.NodeProto, inits: dict) -> bool:
        ref = self._nodes.get(node.output[0]) if node.output else None
        if (
            ref is None
            or node.op_type.startswith("Random")
            or (ref.op_type, ref.domain, list(ref.input), list(ref.output))
            != (node.op_type, node.domain, list(node.input), list(node.output))
            or [a.SerializeToString() for a in ref.attribute]
            != [a.SerializeToString() for a in node.attribute]
        ):
            return False
        for name in node.input:
            mine, theirs = inits.get(name), self._inits.get(name)
            if (mine is None) != (theirs is None):
                return False
            if mine is not None and not _same_tensor(mine, theirs):
                return False
        return True


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    if a.raw_data and b.raw_data:
        return a.raw_data == b.raw_data
    return np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
