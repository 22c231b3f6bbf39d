"""`onnxmerge finetune`: distill a compressed network from the original (onnxmerge.distill)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from onnxmerge.cli.args import (
    ArgumentParser,
    add_input_args,
    add_output_args,
    add_preprocess_args,
    preprocess_of,
)


def add_distill_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The training flags, shared by `finetune` and (prefixed --distill-, with --distill
    itself) by compress."""
    g = p.add_argument_group("distillation (needs onnxmerge[torch])")
    if prefix:
        g.add_argument(
            "--distill",
            action="append",
            nargs="?",
            const="",
            default=None,
            metavar="FOLDER_OR_NPZ",
            help="then distill the result from the input on this data (repeatable; alone: "
            "the built-in photos) for --distill-minutes (10), as `onnxmerge finetune` does; "
            "the --finetune-graph stays untrained",
        )
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        f"--{prefix}minutes",
        type=float,
        default=None,
        help="wall-clock minutes of training (default 10)",
    )
    budget.add_argument(f"--{prefix}steps", type=int, default=None, help="training steps")
    g.add_argument(
        f"--{prefix}device", default="cpu", help="torch device of the student: cpu or cuda"
    )
    g.add_argument(f"--{prefix}batch", type=int, default=16, help="views per step")
    g.add_argument(f"--{prefix}lr", type=float, default=1e-5, help="Adam's peak learning rate")
    g.add_argument(f"--{prefix}temperature", type=float, default=1.0, help="the KL's temperature")
    g.add_argument(
        f"--{prefix}augment",
        choices=("mild", "strong"),
        default="mild",
        help="the training views: mild (crops of 25-100%% of an image, no mixup) or strong "
        "(8-100%%, mixup on half the batches: function matching for long schedules)",
    )
    g.add_argument(
        f"--{prefix}local",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="weight of local distillation: the feature maps the compressed network shares "
        "with the original (same name; pruned ones on their kept channels) are matched too "
        "(0: the outputs only)",
    )
    g.add_argument(
        f"--{prefix}holdout",
        type=float,
        default=0.25,
        help="fraction of the source images held out to pick the best step",
    )


def distill_flags_given(argv: list[str], prefix: str) -> list[str]:
    """The --{prefix}* flags present in argv (to refuse them without --distill)."""
    return [x.split("=")[0] for x in argv if x.startswith(f"--{prefix}")]


def distill_options(a: argparse.Namespace, prefix: str = "") -> dict:
    """distill()'s keyword options from the flags of add_distill_args."""
    get = lambda name: getattr(a, prefix.replace("-", "_") + name)  # noqa: E731
    steps, minutes = get("steps"), get("minutes")
    return {
        "steps": steps,
        "minutes": 10.0 if steps is None and minutes is None else minutes,
        "device": get("device"),
        "batch": get("batch"),
        "lr": get("lr"),
        "temperature": get("temperature"),
        "augment": get("augment"),
        "local": get("local"),
        "holdout": get("holdout"),
    }


def cmd_finetune(argv: list[str]) -> int:
    """onnxmerge finetune STUDENT OUT --teacher ORIGINAL [--data D ...]: distill, write."""
    from onnxmerge import api
    from onnxmerge.errors import OnnxMergeError
    from onnxmerge.graph import parse_input_shapes

    p = ArgumentParser(
        prog="onnxmerge finetune",
        description="Distill a compressed network (onnxmerge's output, or its fine-tune graph "
        "with --plan) from the original on unlabeled data: teacher and student see the same "
        "augmented views (function matching); the step that scores best on held-out source "
        "images is written, with the student's exact structure.",
    )
    p.add_argument("student", help="the compressed ONNX model (or fine-tune graph) to train")
    p.add_argument("output", help="where to write the trained model")
    p.add_argument("--teacher", required=True, help="the original ONNX model")
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="FOLDER_OR_NPZ",
        help="training data, repeatable: folders of images or .npz files of input arrays "
        "(default: the natural photos shipped in scikit-image)",
    )
    p.add_argument(
        "--eval",
        action="append",
        default=None,
        metavar="FOLDER_OR_NPZ",
        help="data to score the student and the output on against the teacher, repeatable "
        "(read as --data; never trained or selected on)",
    )
    p.add_argument("--eval-count", type=int, default=32, help="most --eval inputs (32)")
    p.add_argument(
        "--plan",
        default=None,
        metavar="PLAN_JSON",
        help="the student is this plan's fine-tune graph: fuse it exactly at the end",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the views and the initialization")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT.ckpt.pt (written at every evaluation; kept after Ctrl-C)",
    )
    add_input_args(p)
    add_preprocess_args(p)
    p.add_argument(
        "--no-timing", action="store_true", help="skip timing teacher, student and output"
    )
    add_distill_args(p)
    add_output_args(p, "print the result (before -> after, steps, latencies) as JSON")
    a = p.parse_args(argv)
    checkpoint = Path(str(a.output) + ".ckpt.pt")
    shapes = parse_input_shapes(a.input_shapes)
    where = {"input_shapes": shapes, "external_data_dir": a.external_data_dir}
    pre = preprocess_of(a) or api.plan_preprocess(a.plan, a.student)
    feeds = (
        api.eval_inputs(a.teacher, a.eval, a.eval_count, **where, preprocess=pre)
        if a.eval
        else None
    )
    res = api.distill(
        a.student,
        a.teacher,
        a.data,
        a.output,
        plan=a.plan,
        input_shapes=shapes,
        external_data_dir=a.external_data_dir,
        seed=a.seed,
        preprocess=pre,
        checkpoint=checkpoint,
        resume=a.resume,
        progress=a.progress,
        **distill_options(a),
    )
    if not any("interrupted" in line for line in res.log):
        checkpoint.unlink(missing_ok=True)
    timing, why = None, None
    if not a.no_timing:
        try:
            timing = api.time_apart([a.teacher, a.student, a.output], shapes)
        except OnnxMergeError as exc:  # the model is written: say so, do not fail
            why = f"latency not measured: {exc}"
    scored = eval_scores(a.teacher, a.student, a.output, feeds, where) if feeds else None
    if a.json:
        print(json.dumps({**distill_report(res, timing), **(scored or {})}, indent=1))
        return 0
    lines = res.lines()
    if a.quiet:
        lines = lines[:2] + [x for x in res.log if x.startswith("interrupted")]
    lines += eval_lines(scored) if scored else []
    print("\n".join(lines + ([why] if why else [])))
    if timing:
        t, s, o = timing
        print(
            f"latency (ort-cpu, a fresh process): teacher {t:.3f} ms, student {s:.3f} ms, "
            f"output {o:.3f} ms = {t / o:.2f}x the teacher"
        )
    print(f"wrote {a.output}")
    return 0


def eval_scores(teacher, student, output, feeds: list[dict], where: dict) -> dict:
    """{"eval": {"inputs": n, "before": fidelity of the student, "after": of the output}}
    against the teacher on `feeds` (summary.fidelity's dicts, per graph output)."""
    from onnxmerge.analysis import load
    from onnxmerge.summary import fidelity

    t = load(teacher, where["input_shapes"], where["external_data_dir"])
    before, after = (fidelity(t, load(m, None, where["external_data_dir"]), feeds)
                     for m in (student, output))  # fmt: skip
    return {"eval": {"inputs": len(feeds), "before": before, "after": after}}


def eval_lines(scored: dict) -> list[str]:
    """eval_scores in words: per output, before -> after on the --eval inputs."""
    from onnxmerge.summary import caveat, fidelity_text

    e = scored["eval"]
    return [
        f"on {e['inputs']} --eval inputs vs the teacher, output {name!r}: student "
        f"{fidelity_text(m, True)} -> written {fidelity_text(e['after'][name], True)}{caveat(m)}"
        for name, m in e["before"].items()
    ]


def distill_report(res, timing) -> dict:
    """A DistillResult (and the teacher, student, output latencies in ms, if timed) as a
    JSON-ready dict: steps, before/after, history, log."""
    d = {
        "steps": res.steps,
        "best_step": res.best_step,
        "seconds": res.seconds,
        "before": vars(res.before) if res.before else None,
        "after": vars(res.after) if res.after else None,
        "history": [{k: _finite(v) for k, v in h.items()} for h in res.history],
        "held_out_views": len(res.held_out),
        "log": res.log,
    }
    if timing:
        d["latency_ms"] = dict(zip(("teacher", "student", "output"), timing, strict=True))
    return d


def _finite(v):
    """JSON has no NaN: a float that is not finite is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
