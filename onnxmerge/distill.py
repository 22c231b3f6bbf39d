"""Distillation: train a compressed network toward the original on unlabeled inputs (torch).

The student (onnxmerge's output, or its fine-tune graph with the plan to fuse it after) runs
as an onnxmerge.finetune.TorchModule; the teacher (the original ONNX model) runs in ONNX
Runtime on the same function-matching view (onnxmerge.augment); the loss is KL on classifier
outputs and a per-channel normalized error on the others (onnxmerge.distill_loss), plus,
with `local` > 0, an error relative to each tensor's energy on the feature maps the student
shares with the teacher (onnxmerge.distill_taps).

Adam with a cosine-decayed learning rate over the budget (steps, or minutes of wall time).
The sources are split by group (views of one photo stay together): `holdout` of the groups
are never trained on; their views (centre crop plus seeded mild views, whatever `augment`) are
scored every `eval_every` steps with importance's distortion, and the parameters that scored
best (step 0 included: the output never scores worse there than the student did) are the ones
written. Ctrl-C ends training and keeps the best so far. A checkpoint (torch.save: parameters,
optimizer, step, best, RNG states) is written at every evaluation; `resume=True` continues it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmerge.augment import AUGMENT, Sources, Views, held_views, load_sources, split_sources
from onnxmerge.calibration.preprocess import TORCH, Preprocess, image_hw
from onnxmerge.distill_loss import Score, channel_energy, distill_loss, score
from onnxmerge.distill_progress import advance, progress_bar, restore, save
from onnxmerge.distill_taps import (
    Tap,
    candidates,
    kept_channels,
    match,
    tap_energy,
    teacher_part,
    with_outputs,
)
from onnxmerge.errors import OnnxMergeError
from onnxmerge.result import counted
from onnxmerge.torch_graph import _torch

MAX_HELD = 64  # held-out views scored at each evaluation


@dataclass
class DistillResult:
    """The trained student (`model`, fused when a plan was given) and what was measured.

    `before`/`after`: held-out Score of the student as given and of `model` (ONNX Runtime on
    both); `history`: one dict per evaluation (step, seconds, loss, distortion, top1);
    `held_out`: the held-out views as feeds (batch 1 each); `trained`: the trained student
    before it was fused (the same as `model` without a plan).
    """

    model: onnx.ModelProto
    before: Score | None
    after: Score | None
    steps: int
    best_step: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    held_out: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    trained: onnx.ModelProto | None = field(default=None, repr=False)  # before fusing (plan)

    def lines(self) -> list[str]:
        """The report: budget used, held-out fidelity before -> after."""
        steps = counted(self.steps, "step")
        out = [f"distilled {steps} in {self.seconds:.0f} s; kept step {self.best_step}"]
        if self.before is not None and self.after is not None:
            out.append(f"held-out vs the teacher: {self.before} -> {self.after}")
        return out + self.log


def distill(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    data: Sequence[str | os.PathLike] | Sources | None = None,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    batch: int = 16,
    lr: float = 1e-5,
    temperature: float = 1.0,
    augment: str = "mild",
    device: str = "cpu",
    plan: Any = None,
    local: float = 0.0,
    width: Sequence = (),
    holdout: float = 0.25,
    views_per_source: int = 4,
    eval_every: int | None = None,
    seed: int = 0,
    preprocess: Preprocess = TORCH,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    input_shape: Sequence[int] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Distill `student` from `teacher` (see the module docstring); returns DistillResult.

    Args:
        student, teacher: ONNX models with one input of the same shape and the same outputs.
        data: folders of images or .npz files (augment.load_sources), Sources, or None for
            the built-in photos.
        steps / minutes: the budget (one of them; minutes count wall time of training).
        batch: views per step; lr: Adam's peak learning rate; temperature: the KL's T.
        augment: the views' setting, "mild" or "strong" (augment.AUGMENT: crop area, mixup).
        device: "cpu" or "cuda" (the student's; the teacher runs in ONNX Runtime on CPU).
        plan: a Plan when `student` is a fine-tune graph: the trained graph is fused with it
            (fuse --plan) and the fused network is returned and scored.
        local: weight of the local term (onnxmerge.distill_taps): intermediate tensors the
            student shares with the teacher, matched too; 0 matches the outputs only.
        width: a width plan's groups (Plan.width; default the plan's), so that tensors with
            channels pruned are matched on the teacher's kept channels.
        holdout: fraction of the source groups held out for selection (at least one group
            when there are two or more; 0 turns selection off and keeps the last step).
        input_shape: the input's (C, H, W) (or (H, W, 3)) when the teacher's is dynamic.
        preprocess: how images become inputs (calibration.preprocess; ImageNet's by default).
        on_step: called as on_step(step, loss) after every step (tests, progress hooks).

    Raises:
        OnnxMergeError: no budget, models that do not match, unusable data, a checkpoint of
            another student.
    """
    torch = _torch()
    check_options(steps, minutes, batch, lr, temperature, local, augment)
    _check_device(torch, device)
    in_name, shape = _input(teacher, input_shape, "teacher")
    student_in = _input(student, shape, "student")[0]
    fuse_shapes = _dynamic_shape(student, student_in, shape)  # the trained copy's too
    if plan is not None:  # a plan that does not fit fails now, not after training
        from onnxmerge.fuse import fuse

        fuse(student, plan=plan, input_shapes=fuse_shapes)
    sources = data if isinstance(data, Sources) else load_sources(data, shape, preprocess)
    train_idx, held_idx = split_sources(sources.groups, holdout)
    if not train_idx:
        raise OnnxMergeError("no training sources left after the held-out split")
    views = Views(sources, image_hw(shape), seed, *AUGMENT[augment])
    held_x = held_views(sources, held_idx, image_hw(shape), views_per_source, seed, MAX_HELD)
    teacher_run = _Runner(teacher, in_name)
    held_ref = teacher_run(held_x) if held_x is not None else None
    scale = channel_energy(held_ref or teacher_run(views.batch(train_idx[:batch], False)))

    from onnxmerge.finetune import TorchModule, to_onnx

    torch.manual_seed(seed)
    module = TorchModule(student).to(device)
    if list(module.names.values()) == []:
        raise OnnxMergeError("the student has no trainable weights")
    one = views.batch(train_idx[:1], False)
    got = [o.shape for o in _student_outputs(torch, module, one, device)]
    want = [r.shape for r in teacher_run(one)]
    if got != want:
        raise OnnxMergeError(f"the student's outputs {got} are not shaped as the teacher's {want}")
    n_out = len(want)
    width = width or (plan.width if plan is not None else ())
    taps = _find_taps(student, teacher, in_name, shape, module, one, width) if local else []
    tap_names = [t.name for t in taps]
    train_run = _Runner(with_outputs(teacher, tap_names), in_name) if taps else teacher_run
    if taps:
        first = train_run(views.batch(train_idx[:batch], False))[n_out:]
        scale = scale + tap_energy(teacher_part(first, taps))
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    log = [f"local distillation: {len(taps)} tensors matched"] if local else []
    if sources.normalize:  # images: say how they were prepared (the plan's, or as told)
        log.append(f"images prepared as {sources.preprocess.text()}")
    history: list[dict] = []
    state = {"step": 0, "seconds": 0.0, "best": (math.inf, 0), "best_params": None}
    key = hashlib.sha256(student.SerializeToString()).hexdigest()
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and resume and ckpt.exists():
        restore(torch, ckpt, key, module, opt, views, state)
        history.extend(state.pop("history"))
        log.append(f"resumed {ckpt} at step {state['step']} ({state['seconds']:.0f} s)")
    elif resume:
        log.append(f"no checkpoint {ckpt} to resume: started from step 0")

    def evaluate(loss: float) -> None:
        if held_x is not None:
            now = score(held_ref, _student_outputs(torch, module, held_x, device))
            history.append({"step": state["step"], "seconds": state["seconds"], "loss": loss,
                            "distortion": now.distortion, "top1": now.top1})  # fmt: skip
            if now.distortion < state["best"][0]:
                state["best"] = (now.distortion, state["step"])
                params = module.state_dict()
                state["best_params"] = {k: v.detach().clone() for k, v in params.items()}
        if ckpt is not None:
            save(torch, ckpt, key, module, opt, views, state, history)

    every = eval_every or (max(1, steps // 10) if steps else None)
    budget_s = None if minutes is None else 60.0 * minutes
    bar = progress_bar(progress, steps, budget_s)
    if state["step"] == 0:
        evaluate(math.nan)
    started = time.perf_counter() - state["seconds"]
    last_eval = state["seconds"]
    loss_avg = math.nan
    interrupted = False
    try:
        while True:
            done = state["step"] / steps if steps else state["seconds"] / budget_s
            if done >= 1:
                break
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            pick = views.rng.choice(train_idx, size=batch, replace=len(train_idx) < batch)
            x = views.batch(pick.tolist())
            ref = train_run(x)
            ref = [
                torch.from_numpy(t).to(device)
                for t in ref[:n_out] + teacher_part(ref[n_out:], taps)
            ]
            out = module.run(x.to(device), tensors=tap_names)
            per = [
                distill_loss(o, t, s, temperature) for o, t, s in zip(out, ref, scale, strict=True)
            ]
            loss = sum(per[:n_out])
            if taps:
                loss = loss + local * sum(per[n_out:]) / len(taps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = float(loss.detach())
            loss_avg = value if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * value
            state["step"] += 1
            state["seconds"] = time.perf_counter() - started
            if on_step is not None:
                on_step(state["step"], value)
            due = (
                state["step"] % every == 0
                if every
                else state["seconds"] - last_eval >= budget_s / 10
            )
            if due:
                evaluate(loss_avg)
                last_eval = state["seconds"]
            advance(bar, state, steps, loss_avg, history)
    except KeyboardInterrupt:
        interrupted = True
        log.append(f"interrupted at step {state['step']}: keeping the best so far")
    finally:
        if bar is not None:
            bar.close()
    if not interrupted and (not history or history[-1]["step"] != state["step"]):
        evaluate(loss_avg)
    if held_x is None:
        state["best"] = (math.nan, state["step"])  # nothing to select by: the last step
    if state["best_params"] is not None:
        module.load_state_dict(state["best_params"])
    trained = to_onnx(module, student)
    model = trained
    if plan is not None:
        from onnxmerge.fuse import fuse

        model, report = fuse(trained, plan=plan, input_shapes=fuse_shapes)
        log.append(
            f"fused with the plan: {report.merged_groups} groups, max rel {report.max_rel:.1e}"
        )
    before = after = None
    held_out = []
    if held_x is None:
        log.append("nothing held out (one source group, or holdout 0): the last step is written")
    else:  # the student as given and the written model, scored in ONNX Runtime
        before = score(held_ref, _Runner(student, student_in)(held_x))
        after = score(held_ref, _Runner(model, student_in)(held_x))
        held_out = [{in_name: v[None]} for v in held_x.numpy()]
        log.append(
            f"{len(held_idx)} held-out sources ({len(held_x)} views); best at step "
            f"{state['best'][1]} of {state['step']}"
        )
    return DistillResult(
        model, before, after, state["step"], state["best"][1], state["seconds"], history, log,
        held_out, trained,
    )  # fmt: skip


def check_options(
    steps=None, minutes=None, batch=16, lr=1e-5, temperature=1.0, local=0.0, augment="mild", **_
) -> None:
    """OnnxMergeError unless distill() can train with these: one budget, positive numbers
    (NaN is refused too), a known `augment`; other options are ignored."""
    if (steps is None) == (minutes is None):
        raise OnnxMergeError("give one budget: steps or minutes")
    budget = steps if steps is not None else minutes
    if not budget > 0 or (steps is not None and steps != int(steps)):
        raise OnnxMergeError(f"steps and minutes must be positive, got {budget}")
    for name, value in (("batch", batch), ("lr", lr), ("temperature", temperature)):
        if not value > 0:
            raise OnnxMergeError(f"{name} must be positive, got {value}")
    if not local >= 0:
        raise OnnxMergeError(f"local (the weight of local distillation) must be >= 0, got {local}")
    if augment not in AUGMENT:
        raise OnnxMergeError(f"augment must be one of {', '.join(AUGMENT)}, got {augment!r}")


def _find_taps(student, teacher, in_name, shape, module, one, width) -> list[Tap]:
    """The tensors matched by local distillation, their shapes taken on one view."""
    names = candidates(student, teacher, {in_name: (1, *shape)})
    if not names:
        return []
    teacher_shapes = [v.shape for v in _Runner(with_outputs(teacher, names), in_name)(one)]
    with _torch().no_grad():
        got = module.run(one.to(next(module.parameters()).device), tensors=names)
    n = len(teacher.graph.output)
    student_shapes = [tuple(v.shape) for v in got[len(student.graph.output) :]]
    return match(names, teacher_shapes[n:], student_shapes, kept_channels(width))


def _dynamic_shape(model: onnx.ModelProto, name: str, shape) -> dict | None:
    """{name: 1 x C x H x W} where the model leaves a dimension of its input open (fuse then
    needs it, as --input-shape gives it), else None."""
    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return {name: [1, *shape]}


class _Runner:
    """The teacher (or a scored model) in ONNX Runtime: torch batch -> list of numpy outputs,
    one sample at a time when the model fixes its batch dimension."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        from onnxmerge.runtime import session

        self.session, self.name = session(model), name
        dim = model.graph.input[0].type.tensor_type.shape.dim
        self.batched = not (dim and dim[0].HasField("dim_value"))

    def __call__(self, x: Any) -> list[np.ndarray]:
        a = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        if self.batched:
            return self.session.run(None, {self.name: a})
        outs = [self.session.run(None, {self.name: a[i : i + 1]}) for i in range(len(a))]
        return [np.concatenate(o) for o in zip(*outs, strict=True)]


def _input(
    model: onnx.ModelProto, shape: Sequence[int] | None, role: str
) -> tuple[str, tuple[int, ...]]:
    """(the single input's name, its C x H x W): `shape` if given (checked against the static
    dims), else the model's own, which must then be static."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxMergeError(f"distillation needs a {role} with one input, got {len(inputs)}")
    name = inputs[0].name
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim[1:]]  # fmt: skip
    if shape is None:
        if len(dims) != 3 or None in dims:
            raise OnnxMergeError(
                f"the {role}'s input {name!r} has no static C x H x W: pass --input-shape"
            )
        return name, tuple(dims)
    shape = tuple(int(s) for s in shape)
    if len(dims) != len(shape) or any(
        d not in (None, s) for d, s in zip(dims, shape, strict=False)
    ):
        raise OnnxMergeError(
            f"the {role}'s input {name!r} is N x {dims}, not N x {list(shape)} (the teacher's "
            "or --input-shape)"
        )
    return name, shape


def _check_device(torch, device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise OnnxMergeError(f"unknown device {device!r}: cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise OnnxMergeError("device cuda: this torch build or machine has no CUDA")


def _student_outputs(torch, module, x, device: str, chunk: int = 16) -> list[np.ndarray]:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            outs.append([v.cpu().numpy() for v in module.run(x[i : i + chunk].to(device))])
    return [np.concatenate(o) for o in zip(*outs, strict=True)]
