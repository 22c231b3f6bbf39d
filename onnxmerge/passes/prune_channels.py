"""Remove channels of dependency groups (kinds.width.groups) from a graph, exactly.

`prune_channels(graph, groups, keep, names)` keeps, for each group id in `keep`, the listed
channels of every member and removes the rest, wherever they appear (spec §2.5):
- Conv: output rows and bias (producer), input columns at every tap (consumer); a depthwise
  Conv keeps its rows and bias and lowers `group`; a grouped one slices its columns per
  conv group; ConvTranspose the same with its weight's axes 0 and 1 swapped;
- Gemm / MatMul: input columns (HW-blocks of features after a Flatten), output rows and
  bias;
- per-channel parameters: PRelu slopes, constants of Add/Mul/Sub/Div/..., BatchNormalization
  and InstanceNormalization parameters;
- Split sizes, Slice starts/ends on the channel axis, a Reshape's explicit channel count,
  a Resize's `sizes`; the shapes of the pruned tensors.
New constants get fresh names; the old ones are left for the caller's `cleanup()` (passes'
"rewire first, sweep once"). Graph inputs and outputs never change: only prunable groups
may be pruned. `kept_features` gives the per-tensor indices the pass works from, and
`lost_inputs` what each linear consumer loses (calibration.compensate puts its mean back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.calibration.compensate import Lost
from onnxmerge.compose import LinearConv, densify
from onnxmerge.graph.names import Names
from onnxmerge.graph.tensors import const
from onnxmerge.kinds.width.groups import Group
from onnxmerge.kinds.width.rules import ELEMENTWISE


def kept_features(
    graph: gs.Graph, groups: Sequence[Group], keep: Mapping[int, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Tensor name -> kept indices along axis 1 (features: a flattened tensor's channel c
    spans [c*unit, (c+1)*unit)), for each tensor that loses channels.

    Raises ValueError for a fixed group, an unknown id, or indices that are not sorted,
    unique and within [0, width) (at least one).
    """
    by_id = {g.id: g for g in groups}
    tensors = graph.tensors()
    removed: dict[str, list[np.ndarray]] = {}
    for gid, idx in keep.items():
        g = by_id.get(gid)
        if g is None:
            raise ValueError(f"no channel group {gid}")
        k = np.asarray(idx, dtype=np.int64)
        if not g.prunable and len(k) != g.width:
            raise ValueError(f"group {gid} is fixed: {g.reason}")
        if k.ndim != 1 or not len(k) or np.any(np.diff(k) <= 0) or k[0] < 0 or k[-1] >= g.width:
            raise ValueError(
                f"group {gid}: kept channels must be sorted, unique, in [0, {g.width})"
            )
        per_block = np.bincount(k // (g.width // g.blocks), minlength=g.blocks)
        if g.blocks > 1 and np.any(per_block != per_block[0]):
            raise ValueError(f"group {gid}: each of its {g.blocks} conv groups must keep as many")
        drop = np.setdiff1d(np.arange(g.width), k)
        for m in g.members:
            rows = ((m.start + drop)[:, None] * m.unit + np.arange(m.unit)).ravel()
            removed.setdefault(m.tensor, []).append(rows)
    out = {}
    for name, rows in removed.items():
        gone = np.concatenate(rows)
        if len(gone):
            out[name] = np.setdiff1d(np.arange(tensors[name].shape[1]), gone)
    return out


def lost_inputs(graph: gs.Graph, kept: Mapping[str, np.ndarray]) -> dict[str, Lost]:
    """Node name -> the input features it loses (calibration.compensate.Lost), for each dense
    Conv, ungrouped ConvTranspose, Gemm on a 2-D input, and MatMul on a 2-D input followed by
    an Add (keyed by the Add, which holds its bias) whose input loses features (`kept` from
    kept_features, on the graph before pruning). A Conv's weight is summed over its taps, a
    ConvTranspose's too and divided by its strides' product (the mean over output positions);
    a Gemm's carries alpha / beta; output rows the node also loses are left out."""
    out = {}
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        if x is None or x.name not in kept or not node.outputs:
            continue
        w = const(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            continue
        removed = np.setdiff1d(np.arange(x.shape[1]), kept[x.name])
        k_out = kept.get(node.outputs[0].name)
        if node.op == "Conv" and not _depthwise(node):
            taps = w.reshape(*w.shape[:2], -1, 1)  # any kernel rank, as (taps, 1)
            group = int(node.attrs.get("group", 1))
            dense = densify(LinearConv(taps, np.zeros(len(w)), groups=group)).weight
            weight = dense[:, removed].sum(axis=(2, 3))
        elif node.op == "ConvTranspose" and int(node.attrs.get("group", 1)) == 1:
            # Each input pixel spreads its kernel over prod(strides) output pixels on average:
            # over a full period of output positions, a constant input adds sum(taps) / that.
            spread = np.prod(node.attrs.get("strides", [1] * (w.ndim - 2)))
            weight = w[removed].sum(axis=tuple(range(2, w.ndim))).T / spread
        elif node.op == "Gemm" and len(x.shape) == 2 and not node.attrs.get("transA", 0):
            w = w.T if node.attrs.get("transB", 0) else w
            scale = float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0))
            weight = scale * w[removed].T
        elif node.op == "MatMul" and len(x.shape) == 2 and w.ndim == 2:
            users = node.outputs[0].outputs
            if len(users) != 1 or users[0].op != "Add":
                continue
            node, weight = users[0], w[removed].T  # the bias is the Add's constant
        else:
            continue
        weight = weight if k_out is None else weight[k_out]
        out[node.name] = Lost(x.name, removed, np.asarray(weight, np.float64))
    return out


def _replace(node: gs.Node, i: int, value: np.ndarray, names: Names, tag: str) -> None:
    """Input i of `node` becomes a new constant `value` (fresh name, the old dtype)."""
    old = node.inputs[i]
    dtype = np.asarray(old.values).dtype if isinstance(old, gs.Constant) else value.dtype
    name = names.fresh(f"{node.name or node.op.lower()}_{tag}")
    node.inputs[i] = gs.Constant(name, np.ascontiguousarray(value, dtype=dtype))


def _depthwise(node: gs.Node) -> bool:
    """One input channel per conv group (a Conv's or ConvTranspose's `group` = C_in > 1)."""
    return int(node.attrs.get("group", 1)) == node.inputs[0].shape[1] > 1


def _conv(node: gs.Node, k_in, k_out, names: Names) -> None:
    """Rows `k_out`, columns `k_in`; a depthwise conv (tied) keeps rows only and `group`
    follows; another grouped one takes each conv group's rows and its own columns (balanced:
    kept_features checked that every conv group keeps as many). A ConvTranspose's weight
    (C_in, C_out, ...) is cut the same way with its first two axes swapped (a depthwise one's
    (C, 1, ...) is a depthwise Conv's layout already)."""
    w = const(node.inputs[1])
    group, c_in = int(node.attrs.get("group", 1)), node.inputs[0].shape[1]
    depthwise = _depthwise(node)
    swap = node.op == "ConvTranspose" and not depthwise
    w = np.swapaxes(w, 0, 1) if swap else w
    rows = np.arange(len(w)) if k_out is None else np.asarray(k_out)
    if k_in is not None and group > 1 and not depthwise:
        per_in, per_out = c_in // group, len(w) // group
        cols = np.asarray(k_in).reshape(group, -1) % per_in  # each group's kept columns
        w = w[rows[:, None], cols[rows // per_out]]
    else:
        w = w[rows]
        if k_in is not None and not depthwise:
            w = w[:, k_in]
    _replace(node, 1, np.swapaxes(w, 0, 1) if swap else w, names, "W")
    if len(node.inputs) > 2 and node.inputs[2].name and k_out is not None:
        _replace(node, 2, const(node.inputs[2])[k_out], names, "B")
    if depthwise and k_in is not None:  # tied: the input loses what the output loses
        node.attrs["group"] = len(k_in)


def _gemm(node: gs.Node, k_in, k_out, names: Names) -> None:
    w = const(node.inputs[1])
    trans = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
    if trans:
        w = w.T
    if k_in is not None:
        w = w[k_in]
    if k_out is not None:
        w = w[:, k_out]
    _replace(node, 1, w.T if trans else w, names, "W")
    bias = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if k_out is not None and bias is not None and bias.ndim and bias.shape[-1] > 1:
        _replace(node, 2, bias[..., k_out], names, "B")


def _parameters(node: gs.Node, width: int, k_out, names: Names) -> None:
    """Slice every constant operand that broadcasts per channel onto the output."""
    rank = len(node.outputs[0].shape)
    first = 1 if node.op in ("BatchNormalization", "InstanceNormalization") else 0
    for i, t in enumerate(node.inputs):
        v = const(t) if i >= first else None
        if v is None:
            continue
        ax = 0 if first else 1 - (rank - v.ndim)
        if ax >= 0 and v.shape[ax] == width and width > 1:
            _replace(node, i, np.take(v, k_out, axis=ax), names, f"p{i}")


def _split(node: gs.Node, kept: Mapping[str, np.ndarray], opset: int, names: Names) -> None:
    x = node.inputs[0]
    axis = int(node.attrs.get("axis", 0))
    if (axis + len(x.shape) if axis < 0 else axis) != 1:
        return
    sizes = np.array(
        [len(kept[y.name]) if y.name in kept else y.shape[1] for y in node.outputs], np.int64
    )
    if opset < 13:
        node.attrs["split"] = [int(s) for s in sizes]
        return
    node.attrs.pop("num_outputs", None)  # opset 18's equal split
    while len(node.inputs) < 2:
        node.inputs.append(gs.Variable.empty())
    _replace(node, 1, sizes, names, "split")


def _slice(node: gs.Node, kept: Mapping[str, np.ndarray], opset: int, names: Names) -> None:
    x, y = node.inputs[0], node.outputs[0]
    k_in = kept.get(x.name, np.arange(x.shape[1]))
    k_out = kept.get(y.name, np.arange(y.shape[1]))
    if opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = node.attrs.get("axes")
    else:
        starts, ends = (list(np.ravel(const(node.inputs[i]))) for i in (1, 2))
        has_axes = len(node.inputs) > 3 and node.inputs[3].name
        axes = np.ravel(const(node.inputs[3])) if has_axes else None
    rank = len(x.shape)
    axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    if 1 not in axes:
        return
    j = axes.index(1)
    start = int(starts[j]) + x.shape[1] if starts[j] < 0 else int(starts[j])
    new = int(np.searchsorted(k_in, min(max(start, 0), x.shape[1])))
    starts[j], ends[j] = new, new + len(k_out)
    if opset < 10:
        node.attrs["starts"], node.attrs["ends"] = [int(v) for v in starts], [int(v) for v in ends]
    else:
        _replace(node, 1, np.array(starts, np.int64), names, "starts")
        _replace(node, 2, np.array(ends, np.int64), names, "ends")


def _shape_input(node: gs.Node, i: int, axis: int, value: int, names: Names) -> None:
    """Set entry `axis` of a constant shape/sizes input to `value` (unless it is 0 or -1)."""
    if len(node.inputs) > i and node.inputs[i].name:
        v = np.array(const(node.inputs[i]), copy=True)
        if v.ndim == 1 and len(v) > axis and v[axis] > 0:
            v[axis] = value
            _replace(node, i, v, names, "shape")


def prune_channels(
    graph: gs.Graph, groups: Sequence[Group], keep: Mapping[int, Sequence[int]], names: Names
) -> None:
    """Keep only channels `keep[group id]` (sorted indices in [0, width)) of each listed group.

    `groups` come from `channel_groups` on this graph; a fixed group may only be listed with
    all its channels. Weights, per-channel parameters, Split/Slice/Reshape/Resize constants
    and tensor shapes change in place (fresh constant names from `names`); graph outputs
    keep their shapes. The caller runs `graph.cleanup()`.
    """
    kept = kept_features(graph, groups, keep)
    if not kept:
        return
    opset = int(getattr(graph, "opset", None) or 17)
    width = {name: t.shape[1] for name, t in graph.tensors().items() if name in kept}
    for node in list(graph.nodes):
        ins = [t.name for t in node.inputs if t.name in kept]
        outs = [t.name for t in node.outputs if t.name in kept]
        if not ins and not outs:
            continue
        x = node.inputs[0] if node.inputs else None
        y = node.outputs[0] if node.outputs else None
        k_in = kept.get(x.name) if x is not None else None
        k_out = kept.get(y.name) if y is not None else None
        if node.op in ("Conv", "ConvTranspose"):
            _conv(node, k_in, k_out, names)
        elif node.op in ("Gemm", "MatMul") and len(x.shape) == 2:
            _gemm(node, k_in, k_out, names)
        elif node.op == "Split":
            _split(node, kept, opset, names)
        elif node.op == "Slice":
            _slice(node, kept, opset, names)
        elif node.op == "Reshape" and k_out is not None:
            _shape_input(node, 1, 1, len(k_out), names)
        elif node.op == "Resize" and k_out is not None:
            _shape_input(node, 3, 1, len(k_out), names)
        elif k_out is not None and (
            node.op in ELEMENTWISE or node.op in ("BatchNormalization", "InstanceNormalization")
        ):
            _parameters(node, width[y.name], k_out, names)
    tensors = graph.tensors()
    for name, k in kept.items():
        t = tensors[name]
        t.shape = [t.shape[0], len(k), *t.shape[2:]]
