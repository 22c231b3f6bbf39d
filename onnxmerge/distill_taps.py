"""Local distillation: the student's intermediate tensors trained toward the teacher's.

onnxmerge's rewrites keep tensor names: a merged conv writes the tensor its segment ended in,
a removed activation's consumers read the same name, and a width-pruned tensor keeps its name
with fewer channels. A tensor produced under the same name in the student and the teacher is
therefore the quantity the student's downstream nodes expect, and it can be matched directly
(block-wise distillation: DNA, Li et al. CVPR 2020; block reconstruction: BRECQ, Li et al.
ICLR 2021). Each tap adds a signal next to the change that caused the error, where the
outputs alone give one through the whole network. The hope was that a CPU budget of minutes
would go further; on MobileNetV2 at 1.5x it did not (benchmarks/distill.py), so distill()'s
`local` is 0 by default.

A tap is a float N x C x H x W tensor that a node produces in both graphs, that is no graph
output, and that has the teacher's shape, or C' < C channels where a width plan says which of
the teacher's channels were kept (`kept_channels`). Its loss is the squared error relative
to the teacher's mean energy of the whole tensor (fixed on the first batch), not per channel
as for outputs: feature maps after a ReLU have channels that are dead on a batch, and a floored
per-channel energy blew the loss up to ~1e4 (ResNet-18, PP-OCR cls) next to an output KL of
~1. The local term is the mean over taps, weighted by `local` in distill().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmerge.graph.load import with_input_shapes


@dataclass
class Tap:
    """A tensor matched between student and teacher: `index` picks the teacher's channels
    (axis 1) the student kept, None when the shapes are equal."""

    name: str
    index: np.ndarray | None = None


def kept_channels(width: Sequence) -> dict[str, list[tuple[int, int, list[int]]]]:
    """Per tensor of a width plan: (start, end, kept channel indices, absolute) for every
    group segment in it (plan.WidthGroup.members [tensor, start, end] and kept)."""
    out: dict[str, list[tuple[int, int, list[int]]]] = {}
    for g in width:
        for tensor, start, end in g.members:
            kept = [start + k for k in g.kept if k < end - start]
            out.setdefault(tensor, []).append((start, end, kept))
    return out


def channel_index(channels: int, segments: list[tuple[int, int, list[int]]]) -> np.ndarray:
    """The teacher's channels (of `channels`) that remain: every channel outside the
    segments, and the kept ones inside them, in order."""
    covered = np.zeros(channels, bool)
    kept = []
    for start, end, k in segments:
        covered[start:end] = True
        kept += k
    return np.array(sorted(set(np.flatnonzero(~covered).tolist()) | set(kept)), np.int64)


def candidates(student: onnx.ModelProto, teacher: onnx.ModelProto, shape: dict) -> list[str]:
    """Names a node produces in both graphs, no graph output, float and of rank 4 in the
    teacher (shape inference at `shape`, {input name: dims})."""
    try:
        t = onnx.shape_inference.infer_shapes(with_input_shapes(teacher, shape))
    except onnx.shape_inference.InferenceError:
        return []  # nothing to match: distillation goes on with the outputs alone
    ranked = {
        v.name
        for v in t.graph.value_info
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        and len(v.type.tensor_type.shape.dim) == 4
    }
    made = {o for n in student.graph.node for o in n.output}
    outputs = {o.name for o in (*teacher.graph.output, *student.graph.output)}
    order = [o for n in teacher.graph.node for o in n.output]
    return [o for o in order if o in made and o in ranked and o not in outputs]


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the float tensors `names` (after its own)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in names:
        out.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return out


def match(
    names: Sequence[str],
    teacher_shapes: Sequence[tuple],
    student_shapes: Sequence[tuple],
    kept: dict[str, list[tuple[int, int, list[int]]]] | None = None,
) -> list[Tap]:
    """The taps among `names`, given each one's shape in the teacher and the student (one
    view): equal shapes, or the student's channels the width plan's kept ones."""
    taps = []
    for name, ts, ss in zip(names, teacher_shapes, student_shapes, strict=True):
        if ts == ss:
            taps.append(Tap(name))
        elif kept and name in kept and len(ts) == len(ss) == 4 and ts[2:] == ss[2:]:
            index = channel_index(ts[1], kept[name])
            if len(index) == ss[1]:
                taps.append(Tap(name, index))
    return taps


def teacher_part(values: Sequence[np.ndarray], taps: Sequence[Tap]) -> list[np.ndarray]:
    """The teacher's tap tensors cut to the student's channels."""
    return [v if t.index is None else v[:, t.index] for v, t in zip(values, taps, strict=True)]


def tap_energy(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per tap, its mean energy repeated per channel: distill_loss's `scale`, so that its
    per-channel mean becomes the tensor's squared error relative to its energy."""
    out = []
    for v in values:
        energy = float(np.mean(np.asarray(v, np.float64) ** 2))
        out.append(np.full(v.shape[1], max(energy, 1e-12)))
    return out
