"""Importance: how much the network's output moves when one segment is merged.

For each candidate, that one segment of the original network is replaced by its merged conv
(interior activations removed, pruned convs dropped) and the network is run on calibration
inputs with ONNX Runtime. Distortion is the mean KL(softmax(original) || softmax(modified))
for classifier-like outputs (2-D, >= 2 classes) and the relative squared error
||a - b||^2 / ||a||^2 otherwise, summed over outputs. Importance = -distortion, so the
unchanged network scores 0 and the DP maximises a sum of non-positive terms, which keeps it
additive over segments (the LayerMerge surrogate).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from onnxmerge.compose import LinearConv
from onnxmerge.errors import OnnxMergeError
from onnxmerge.verify import session

DistortionFn = Callable[[onnx.ModelProto], float]


def calibration_inputs(
    model: onnx.ModelProto,
    source: str | os.PathLike | None = None,
    count: int = 8,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Feeds for the model's single image input: an .npz of arrays, or smooth random images.

    An .npz holds arrays shaped like the input (N, C, H, W) under any key (all are used, in
    order, up to `count`). Without a source, images are low-frequency random fields (a weak
    stand-in for natural photos: pass real data for real importances).
    """
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxMergeError(
            "importance needs a model with one input; use the Python API's "
            "distortion_fn for multi-input models"
        )
    inp = inputs[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    if source is None:
        rng = np.random.default_rng(seed)
        low = rng.standard_normal((count, *shape[1:2], 8, 8))
        reps = [int(np.ceil(s / 8)) for s in shape[2:]]
        imgs = np.kron(low, np.ones((1, 1, *reps)))[..., : shape[2], : shape[3]]
        imgs = imgs + 0.3 * rng.standard_normal(imgs.shape)
        arrays = list(imgs.reshape(count, 1, *shape[1:]))
    else:
        path = Path(source)
        if not path.is_file() or path.suffix != ".npz":
            raise OnnxMergeError(f"--calib {source}: expected an .npz file of input arrays")
        with np.load(path) as data:
            stacked = np.concatenate(
                [np.asarray(data[k]).reshape(-1, *shape[1:]) for k in data.files]
            )
        arrays = [a[None] for a in stacked[:count]]
        if not arrays:
            raise OnnxMergeError(f"--calib {source}: no arrays of shape {shape[1:]}")
    return [{inp.name: a.astype(dtype)} for a in arrays]


def _distortion(ref: list[list[np.ndarray]], out: list[list[np.ndarray]]) -> float:
    total = 0.0
    for r_list, o_list in zip(ref, out, strict=True):
        for r, o in zip(r_list, o_list, strict=True):
            r, o = np.asarray(r, np.float64), np.asarray(o, np.float64)
            if r.ndim == 2 and r.shape[1] >= 2:
                lr = r - r.max(1, keepdims=True)
                lo = o - o.max(1, keepdims=True)
                lr -= np.log(np.exp(lr).sum(1, keepdims=True))
                lo -= np.log(np.exp(lo).sum(1, keepdims=True))
                total += float(np.sum(np.exp(lr) * (lr - lo), axis=1).mean())
            else:
                total += float(np.sum((r - o) ** 2) / max(np.sum(r**2), 1e-30))
    return total / max(len(ref), 1)


def swap_segment(
    base: onnx.ModelProto, src: str, target: str, lin: LinearConv, name: str
) -> onnx.ModelProto:
    """`base` with `target` computed by one Conv from `src`; nodes left dead are removed."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    g = m.graph
    nodes = [n for n in g.node if target not in n.output]
    dtype = next(
        (onnx.numpy_helper.to_array(t).dtype for t in g.initializer if t.dims and len(t.dims) == 4),
        np.float32,
    )
    g.initializer.extend(
        [
            onnx.numpy_helper.from_array(lin.weight.astype(dtype), f"{name}_W"),
            onnx.numpy_helper.from_array(lin.bias.astype(dtype), f"{name}_B"),
        ]
    )
    nodes.append(
        onnx.helper.make_node(
            "Conv",
            [src, f"{name}_W", f"{name}_B"],
            [target],
            name=name,
            kernel_shape=list(lin.weight.shape[2:]),
            strides=list(lin.stride),
            pads=list(lin.pads),
            dilations=list(lin.dilation),
            group=lin.groups,
        )
    )
    live = {o.name for o in g.output}
    kept = []
    for n in reversed(_toposort(nodes)):
        if any(o in live for o in n.output):
            kept.append(n)
            live.update(n.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    used = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(used)
    del g.value_info[:]
    return m


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    order, state = [], {}

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, done = stack.pop()
            if done:
                state[j] = 2
                order.append(nodes[j])
                continue
            if state.get(j):
                continue
            state[j] = 1
            stack.append((j, True))
            stack.extend(
                (produced[x], False)
                for x in nodes[j].input
                if x in produced and not state.get(produced[x])
            )

    for i in range(len(nodes)):
        visit(i)
    return order


class Scorer:
    """Distortion of modified models against the base model on fixed calibration feeds."""

    def __init__(self, base: onnx.ModelProto, feeds: list[dict], fn: DistortionFn | None = None):
        self.base, self.feeds, self.fn = base, feeds, fn
        self.offset = fn(base) if fn else 0.0
        self.ref = None if fn else self._outputs(base)

    def _outputs(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        sess = session(model)
        return [sess.run(None, f) for f in self.feeds]

    def distortion(self, model: onnx.ModelProto) -> float:
        if self.fn:
            return self.fn(model) - self.offset
        return _distortion(self.ref, self._outputs(model))


def importance_table(
    scorer: Scorer,
    jobs: list[tuple[object, Callable[[], onnx.ModelProto]]],
    progress: bool = True,
) -> dict[object, float]:
    """Importance (-distortion) per job key; each job builds its swapped model lazily."""
    out = {}
    for key, build in tqdm(
        jobs, desc="importance", unit="segment", disable=not progress, leave=False
    ):
        out[key] = -scorer.distortion(build())
    return out
