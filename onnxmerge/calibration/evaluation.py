"""The inputs the summary scores the written network on: inputs no choice was made on.

The calibration inputs split by source in two halves: the refit fits on one, and the search
scores candidate plans on the other (importance.holdout_split), so a fidelity measured on the
held-out half is the fidelity of the plan chosen *because* it read well there. On the
pretrained MobileNetV2, width @ 1.07x read 0.91 top-1 agreement on its held-out views and
0.80 on 100 crops of other photos (README, "INT8 after compression"). The summary therefore
scores on the first of:

1. `--eval DATA`: the user's own inputs (folders of images, one centre crop each, or .npz
   files, read as `--calib` reads them), which neither the refit nor the search sees;
2. with the built-in photos as calibration data: the built-in photos whose scene the
   calibration did not show (every photo beyond `--calib-count`'s), one centre crop each;
3. with smooth random fields as calibration data: fresh fields of another seed (still not
   real data, and said so);
4. else the held-out half, with a note that the search chose on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from onnxmerge.calibration.data import Source, random_fields, read_inputs, source_paths
from onnxmerge.calibration.preprocess import TORCH, Preprocess
from onnxmerge.errors import OnnxMergeError

HELD_OUT = "held-out calibration inputs"
EVAL = "--eval inputs"
UNUSED_PHOTOS = "built-in photos the calibration did not use"
RANDOM_FIELDS = "random fields the search never saw (not real data: --eval to score on yours)"


@dataclass
class EvaluationSet:
    """Feeds (batch 1 each) to score on, what they are (`on`, for the summary: one of the
    labels above) and whether the search and the refit never saw them (`unseen`)."""

    feeds: list[dict]
    on: str = HELD_OUT
    unseen: bool = False


def evaluation_set(
    model: onnx.ModelProto,
    calib: Source = None,
    calib_count: int = 16,
    seed: int = 0,
    eval_data: Source = None,
    eval_count: int = 32,
    preprocess: Preprocess = TORCH,
) -> EvaluationSet | None:
    """The inputs to score `model`'s compression on (see the module docstring), or None for
    the held-out calibration half (the caller has it). `eval_count` caps the inputs drawn
    (`--eval`, unused photos, fresh fields); images are prepared as `preprocess` says.
    Raises OnnxMergeError for bad `--eval` data or `eval_count` below 1."""
    if eval_count < 1:
        raise OnnxMergeError(f"--eval-count {eval_count}: must be at least 1")
    if source_paths(eval_data):
        found = read_inputs(model, eval_data, eval_count, seed, preprocess, "--eval", one=True)
        return EvaluationSet(found.feeds, EVAL, True)
    if source_paths(calib):
        return None
    fresh = read_inputs(model, None, eval_count, seed + 1, preprocess, unused_by=calib_count,
                        one=True).feeds  # fmt: skip
    if not fresh:  # the calibration showed every built-in scene
        return None
    return EvaluationSet(fresh, RANDOM_FIELDS if random_fields(None, model) else UNUSED_PHOTOS,
                         True)  # fmt: skip


REQUEST = (
    "calib",
    "calib_count",
    "seed",
    "eval_data",
    "eval_count",
    "preprocess",
)  # what `deferred` reads


def deferred(model: onnx.ModelProto, settings: Mapping) -> Callable[[], EvaluationSet | None]:
    """`evaluation_set` of `model` with the REQUEST keys of `settings` (compress's arguments),
    as a call made when the summary is first asked for, except that `--eval` data is read now:
    bad data fails before any work (OnnxMergeError)."""
    request = {k: settings[k] for k in REQUEST if k in settings}
    if request.get("eval_count", 32) < 1 or source_paths(request.get("eval_data")):
        found = evaluation_set(model, **request)
        return lambda: found
    return functools.partial(evaluation_set, model, **request)
