"""The commands: parse arguments, call onnxmerge.api, print. No logic of their own."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from onnxmerge.cli.args import (
    ArgumentParser,
    add_backend_args,
    add_groups_args,
    add_output_args,
    backend_options,
    preprocess_of,
)
from onnxmerge.cli.compress_args import SUMMARY_JSON, compress_parser
from onnxmerge.cli.finetune import (
    distill_flags_given,
    distill_options,
    distill_report,
)
from onnxmerge.cli.inspect_text import groups_text, print_inspect


def cmd_compress(argv: list[str]) -> int:
    """onnxmerge IN OUT --speedup X: compress, write model + plan (+ fine-tune graph)."""
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes

    parser = compress_parser()
    a = parser.parse_args(argv)
    if a.speedup is None and a.from_plan is None:
        parser.error("--speedup is required (or --from-plan PLAN_JSON)")
    if a.width_share is not None and a.prune != "both":
        parser.error("--width-share applies to --prune both only")
    if a.int8 and a.backend != "ort-cpu":
        parser.error("--int8 quantizes for ONNX Runtime's CPU kernels: use --backend ort-cpu")
    if a.distill is None and distill_flags_given(argv, "distill-"):
        parser.error(f"{distill_flags_given(argv, 'distill-')[0]} needs --distill")
    distill_data = [d for d in a.distill if d] if a.distill is not None else []
    if a.distill is not None:  # before compressing: a typo or a missing torch fails at once
        api.check_data(distill_data, "--distill", distill_options(a, "distill-"))
    plan_path = a.plan or api.default_plan_path(a.output)
    outputs = [a.output, plan_path] + ([a.finetune_graph] if a.finetune_graph else [])
    api.check_outputs(a.input, outputs, a.external_data_dir, [a.from_plan] if a.from_plan else [])
    shapes = parse_input_shapes(a.input_shapes)
    common = {
        "backend": a.backend,
        "backend_options": backend_options(a),
        "calib": a.calib,
        "calib_count": a.calib_count,
        "eval_data": a.eval,
        "eval_count": a.eval_count,
        "preprocess": preprocess_of(a),
        "calibrate": not a.no_calibrate,
        "ridge": a.ridge,
        "input_shapes": shapes,
        "external_data_dir": a.external_data_dir,
        "keep": a.keep,
        "seed": a.seed,
    }
    if a.from_plan is not None:
        res = api.from_plan(a.input, a.from_plan, **common)
    else:
        res = api.compress(
            a.input,
            a.speedup,
            kind=a.prune,
            method=a.method,
            width_align=a.width_align,
            min_width=a.min_width,
            width_importance=a.width_importance,
            width_share="auto" if a.width_share is None else a.width_share,
            width_search=a.width_search,
            width_selection=a.width_selection,
            calibrate_importance=not (a.no_calibrate or a.plain_importance),
            cache_dir=a.cache,
            max_kernel=a.max_kernel,
            progress=a.progress,
            **common,
        )
    distilled = None
    if a.distill is not None:
        distilled = api.distill_result(
            res,
            a.input,
            distill_data or None,
            input_shapes=shapes,
            external_data_dir=a.external_data_dir,
            seed=a.seed,
            progress=a.progress,
            **distill_options(a, "distill-"),
        )
    if a.int8:
        api.quantize_result(res)
    plan_path = api.write_result(res, a.output, plan_path, a.finetune_graph)
    if a.json:
        report = res.table.to_dict() if res.table else {}
        if distilled is not None:
            report["distillation"] = distill_report(distilled, None)
        print(json.dumps(report, indent=1))
        return 0
    print("\n".join(res.summary(quiet=a.quiet)))
    print(
        f"wrote {a.output} and {plan_path}"
        + (f" and {a.finetune_graph}" if a.finetune_graph else "")
    )
    if a.finetune_graph and not a.quiet:
        print(
            f"after fine-tuning {a.finetune_graph}, merge exactly this plan's groups: "
            f"onnxmerge fuse {a.finetune_graph} OUT.onnx --plan {plan_path}"
            + (f" --input-shape {' '.join(a.input_shapes)}" if a.input_shapes else "")
        )
    return 0


def cmd_inspect(argv: list[str]) -> int:
    """onnxmerge inspect MODEL: the conv chains and why they break."""
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes

    p = ArgumentParser(
        prog="onnxmerge inspect", description="Show the conv chains onnxmerge finds in a model."
    )
    p.add_argument("model", help="the ONNX model")
    add_groups_args(p)
    add_backend_args(p, candidates=False)
    add_output_args(p, "print the chains (or groups) as JSON instead of text")
    a = p.parse_args(argv)
    if a.width_align is not None and not a.groups:
        p.error("--width-align counts prunable channel groups: it needs --groups")
    shapes = parse_input_shapes(a.input_shapes)
    if a.groups:
        report = api.groups(
            a.model,
            shapes,
            a.external_data_dir,
            a.keep,
            a.width_align,
            backend=a.backend,
            backend_options=backend_options(a),
            cache_dir=a.cache,
        )
        print(json.dumps(report, indent=1) if a.json else groups_text(report))
        return 0
    report = api.inspect(a.model, shapes, a.external_data_dir, a.keep)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_inspect(report)
    return 0


def cmd_fuse(argv: list[str]) -> int:
    """onnxmerge fuse IN OUT [--plan PLAN]: merge conv runs exactly, verified."""
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes
    from onnxmerge.plan import Plan

    p = ArgumentParser(
        prog="onnxmerge fuse",
        description="Merge every activation-free run of convs into one Conv. By default only "
        "merges that are exact everywhere (the fine-tune form); --direct merges all runs and "
        "reports the border error. With --plan, exactly the plan's groups of its fine-tune "
        "graph are merged instead.",
    )
    p.add_argument("input", help="the ONNX model (a fine-tune graph with --plan)")
    p.add_argument("output", help="where to write the fused model")
    p.add_argument(
        "--direct",
        action="store_true",
        help="also merge runs whose later convs pad (exact in the interior only)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="merge every run as far as exactness allows, even where the merged conv runs "
        "slower on the backend (by default only merges that pay are made)",
    )
    p.add_argument(
        "--plan",
        default=None,
        metavar="PLAN_JSON",
        help="merge exactly the groups of this plan (the .plan.json written with the "
        "--finetune-graph INPUT), nothing else; a plan that does not fit INPUT is an error",
    )
    add_backend_args(p, candidates=False)
    add_output_args(p, SUMMARY_JSON)
    a = p.parse_args(argv)
    api.check_outputs(a.input, [a.output], a.external_data_dir, [a.plan] if a.plan else [])
    shapes = parse_input_shapes(a.input_shapes)
    plan = Plan.load(a.plan) if a.plan else None  # a bad plan fails before the model loads
    _, r = api.fuse(
        a.input,
        a.output,
        a.direct,
        shapes,
        plan,
        a.external_data_dir,
        a.keep,
        all_runs=a.all,
        backend=a.backend,
        backend_options=backend_options(a),
        cache_dir=a.cache,
        progress=a.progress,
    )
    if a.json:
        print(json.dumps(r.summary.to_dict() if r.summary else {}, indent=1))
        return 0
    if not a.quiet:
        what = f"{r.merged_groups} groups of {a.plan}" if a.plan else f"{r.merged_groups} groups"
        print(f"merged {what}: {r.convs_before} -> {r.convs_after} Conv nodes")
        if r.skipped_inexact:
            print(
                f"left {r.skipped_inexact} activation-free runs unmerged: a later conv pads, so "
                "a merge would be exact in the interior only (--direct merges them)"
            )
        for g in r.groups:
            border = f"; border {g.border}" if g.border is not None else " (exact)"
            if g.border is not None or g.interior.max_rel > 1e-4:
                print(f"  {g.tensor}: interior {g.interior}{border}")
        for name, d in r.outputs.items():
            print(f"output {name}: {d} vs input (ONNX Runtime, random input)")
    if r.summary is not None:
        print("\n".join(r.summary.lines()))
    print(f"wrote {a.output}")
    return 0


def cmd_profile(argv: list[str]) -> int:
    """onnxmerge profile MODEL: fill the latency cache with every candidate conv."""
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes

    p = ArgumentParser(
        prog="onnxmerge profile", description="Time every candidate merged conv of a model."
    )
    p.add_argument("model", help="the ONNX model")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="measure every conv again instead of reading the cache (e.g. after a busy spell)",
    )
    add_backend_args(p)
    add_output_args(p)
    a = p.parse_args(argv)
    r = api.profile(
        a.model,
        backend=a.backend,
        backend_options=backend_options(a),
        cache_dir=a.cache,
        max_kernel=a.max_kernel,
        input_shapes=parse_input_shapes(a.input_shapes),
        external_data_dir=a.external_data_dir,
        refresh=a.refresh,
        keep=a.keep,
        progress=a.progress,
    )
    print(
        f"{r.candidates} candidates, {r.signatures} distinct convs: {r.hits} from cache, "
        f"{r.new} measured ({r.cache})"
    )
    print(
        f"model {r.model_ms:.3f} ms end to end on {r.backend}; its chain convs sum to "
        f"{r.covered_ms:.3f} ms in the table"
    )
    return 0


def cmd_demo(argv: list[str]) -> int:
    """onnxmerge demo: build the embedded example (a half-width ResNet-18 at 96x96), compress it."""
    from onnxmerge import zoo
    from onnxmerge.graph import save_model

    p = ArgumentParser(
        prog="onnxmerge demo", description="Compress a built-in example model end to end."
    )
    p.add_argument("folder", nargs="?", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--speedup", type=float, default=1.2, help="end-to-end speedup to reach")
    add_output_args(p)
    a = p.parse_args(argv)
    folder = Path(a.folder or tempfile.mkdtemp(prefix="onnxmerge-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "resnet18.onnx"
    save_model(zoo.resnet(18, width=0.5, size=96), src)
    print(f"example model: {src}")
    return cmd_compress(
        [
            str(src),
            str(folder / "resnet18.merged.onnx"),
            "--speedup",
            str(a.speedup),
            "--finetune-graph",
            str(folder / "resnet18.finetune.onnx"),
            *(["-q"] if a.quiet else []),
            *(["-v"] if a.verbose else []),
        ]
    )


def cmd_finetune(argv: list[str]) -> int:
    """onnxmerge finetune (cli.finetune)."""
    from onnxmerge.cli.finetune import cmd_finetune as run

    return run(argv)


COMMANDS = {
    "inspect": cmd_inspect,
    "fuse": cmd_fuse,
    "profile": cmd_profile,
    "demo": cmd_demo,
    "finetune": cmd_finetune,
}
