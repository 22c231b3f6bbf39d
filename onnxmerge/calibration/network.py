"""Calibrate the merged convs of a compressed network, in network order.

Each merged conv is refit (onnxmerge.calibrate.fit_conv) so that, on the compressed network's
OWN input to it, it reproduces the ORIGINAL network's tensor at the same place (the output of
the segment it replaced). Fitting in topological order on the compressed network's activations
lets each group absorb part of the error its predecessors left, instead of errors piling up.
A ConvTranspose that width pruning narrowed is refit as the stride-1 conv it equals on its
zero-inserted input (onnxmerge.conv_transpose).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from onnxmerge.calibration.baseline import Baseline
from onnxmerge.calibration.capture import capture
from onnxmerge.calibration.compensate import Lost, compensate
from onnxmerge.calibration.fit import fit_conv
from onnxmerge.conv_transpose import transposed, zero_insert
from onnxmerge.graph.conv import read_linear_proto, read_transpose_proto

LINEAR = ("Conv", "ConvTranspose")  # the ops refit here


@dataclass
class GroupFit:
    """What calibration did to one merged conv (errors relative to the target's energy)."""

    name: str
    error_before: float
    error_after: float
    fitted: bool
    reason: str = ""

    def __str__(self) -> str:
        if not self.fitted:
            return f"{self.name}: plain composition ({self.reason})"
        return f"{self.name}: rel. error {self.error_before:.3g} -> {self.error_after:.3g}"


def refit_merged(
    original: onnx.ModelProto,
    merged: onnx.ModelProto,
    names: Mapping[str, np.ndarray | None] | set[str],
    feeds: list[dict[str, np.ndarray]],
    fit_options: dict | None = None,
    progress: bool = False,
    targets: dict[str, np.ndarray] | None = None,
    baseline: Baseline | None = None,
    lost: Mapping[str, Lost] | None = None,
) -> tuple[onnx.ModelProto, list[GroupFit]]:
    """`merged` with the Conv nodes named in `names` refit, in network order.

    Each conv's target is the `original` network's tensor of the same name as the conv's
    output (a rewrite keeps the replaced segment's output name), restricted to the output
    channels `names[conv]` where width pruning kept only those (None: all). `feeds` are
    batch-1 input dicts; `fit_options` go to calibration.fit.fit_conv (ridge, ...).
    `targets`: the original's tensors already captured on these feeds, by name; the ones
    missing are captured and added (a caller refitting many variants keeps it across calls).
    `baseline`: the original's Baseline on these feeds; with it, each conv's input is computed
    from the original's tensors by the changed part of the network only (calibration.baseline).
    `lost`: node name -> the input features width pruning removed from it; their mean over
    `feeds` goes into the node's bias before any refit (calibration.compensate).
    """
    kept = names if isinstance(names, Mapping) else dict.fromkeys(names)
    model = onnx.ModelProto()
    model.CopyFrom(merged)
    _give_biases(model, kept)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in LINEAR and n.name in kept]
    targets = {} if targets is None else targets
    lost = lost or {}
    wanted = [n.output[0] for n in nodes] + [item.tensor for item in lost.values()]
    missing = [name for name in dict.fromkeys(wanted) if name not in targets]
    if missing:
        targets.update(baseline.tensors(missing) if baseline else capture(original, feeds, missing))
    if lost:
        compensate(model, lost, targets)
        inits = {t.name: t for t in model.graph.initializer}
    reports = []
    for node in tqdm(nodes, desc="calibration", unit="conv", disable=not progress, leave=False):
        src, dst = node.input[0], node.output[0]
        x = (baseline.capture(model, [src]) if baseline else capture(model, feeds, [src]))[src]
        y = targets[dst] if kept[node.name] is None else targets[dst][:, kept[node.name]]
        x, y = (x, y) if x.ndim == 4 else (x[:, :, None], y[:, :, None])  # a 1-D conv's
        if node.op_type == "Conv":  # a 1-D conv in its height-1 form, as its tensors
            lin = read_linear_proto(node, inits)
        elif found := read_transpose_proto(node, inits):  # the conv it is on x zero-inserted
            lin, x = found[0], zero_insert(x, found[1])
        else:
            why = "a ConvTranspose with groups, dilation, output_shape or wide pads"
            reports.append(GroupFit(node.name, np.nan, np.nan, False, why))
            continue
        fit = fit_conv(lin, x, y, **(fit_options or {}))
        if fit.conv is None:
            reports.append(GroupFit(node.name, np.nan, np.nan, False, fit.reason))
            continue
        weight = fit.conv.weight if node.op_type == "Conv" else transposed(fit.conv.weight)
        for value, name in ((weight, node.input[1]), (fit.conv.bias, node.input[2])):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type)
            value = value.reshape(inits[name].dims).astype(dtype)
            inits[name].CopyFrom(onnx.numpy_helper.from_array(value, name))
        reports.append(GroupFit(node.name, fit.error_before, fit.error_after, True))
    return model, reports


def _give_biases(model: onnx.ModelProto, names: Mapping) -> None:
    """A zero bias initializer for every named Conv (or ConvTranspose) without one (the
    refit fits a bias)."""
    inits = {t.name: t for t in model.graph.initializer}
    taken = {t.name for t in model.graph.initializer} | {n.name for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type not in LINEAR or node.name not in names or len(node.input) > 2:
            continue
        w = inits[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        outputs = w.dims[0] if node.op_type == "Conv" else w.dims[1] * group
        name, i = f"{node.name}_bias", 0
        while name in taken:
            i += 1
            name = f"{node.name}_bias_{i}"
        taken.add(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type)
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(outputs, dtype), name))
        node.input.append(name)
