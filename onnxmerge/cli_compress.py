"""CLI for the main job (`onnxmerge IN OUT --speedup X`), `profile` and `demo`: parsing only."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from onnxmerge.cli import ArgumentParser, add_model_args


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="ort-cpu",
        help="runtime to time on: ort-cpu (default), ort-cuda, ort-trt, trt, torch",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size to time at (default 1)")
    p.add_argument("--threads", type=int, default=None, help="ort-cpu intra-op threads")
    p.add_argument("--fp16", action="store_true", help="time in fp16 (trt)")
    p.add_argument(
        "--cache",
        default=None,
        help="latency cache folder (default $ONNXMERGE_CACHE or ~/.cache/onnxmerge)",
    )
    add_model_args(p)
    p.add_argument(
        "--max-kernel", type=int, default=7, help="largest merged kernel considered (default 7)"
    )


def _backend_options(a: argparse.Namespace) -> dict:
    opts = {"batch": a.batch}
    if a.threads is not None:
        opts["threads"] = a.threads
    if a.fp16:
        opts["precision"] = "fp16"
    return opts


def _speedup(value: str) -> float | str:
    if value == "max":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'max', got {value!r}") from None


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="onnxmerge",
        description="Make an ONNX CNN shallower and faster: remove activations, prune and merge "
        "conv layers, chosen by dynamic programming over measured latency and importance. "
        "Other commands: inspect, fuse, profile, demo (onnxmerge COMMAND -h).",
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--speedup",
        type=_speedup,
        help="end-to-end speedup to reach, or 'max' for the fastest plan (required unless "
        "--from-plan)",
    )
    p.add_argument("--method", default="layermerge", choices=["layermerge", "depth"])
    p.add_argument(
        "--calib",
        default=None,
        help="calibration data: a folder of images (ImageNet-normalized centre crops) or an "
        ".npz of input arrays (N,C,H,W), optionally with an integer array 'groups' marking "
        "inputs cut from one source; default: built-in natural photos (onnxmerge[photos])",
    )
    p.add_argument(
        "--calib-count", type=int, default=16, help="calibration inputs to use (default 16)"
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="plain kernel composition: no least-squares refit of merged convs (the output "
        "then equals `onnxmerge fuse` of the --finetune-graph)",
    )
    p.add_argument(
        "--plain-importance",
        action="store_true",
        help="score candidates by their plain composed conv, not the refit one",
    )
    p.add_argument(
        "--ridge",
        type=float,
        default=1e-2,
        help="ridge strength of the refit, relative to the mean input energy (default 0.01)",
    )
    p.add_argument(
        "--plan",
        default=None,
        help="where to write the plan JSON (default: OUTPUT with .plan.json)",
    )
    p.add_argument(
        "--from-plan",
        default=None,
        metavar="PLAN_JSON",
        help="rebuild a saved plan instead of solving (no latency table or importance); "
        "--speedup is then ignored",
    )
    p.add_argument(
        "--finetune-graph",
        default=None,
        help="also write the unmerged fine-tune form; after training, `onnxmerge fuse FT OUT "
        "--plan PLAN` merges exactly the plan's groups of it",
    )
    _backend_args(p)
    return p


def _report(res) -> None:
    plan = res.plan
    merged = [g for g in plan.groups if g.end - g.start > 1]
    print(
        f"candidates {res.candidates} ({res.signatures} distinct convs; latency cache "
        f"{res.latency_hits} hits, {res.latency_new} measured; importance cache "
        f"{res.importance_hits} hits)"
    )
    for line in res.log:
        print(line)
    for fit in res.calibration:
        print(f"  calibrated {fit}")
    for g in merged:
        pruned = f", pruned {g.pruned}" if g.pruned else ""
        print(
            f"  {g.chain} ({g.start},{g.end}] -> one {g.kernel[0]}x{g.kernel[1]} conv"
            f"{pruned}: {g.latency_ms:.3f} ms, importance {g.importance:.4g}"
        )
    print(
        f"{len(merged)} merged groups; predicted {plan.predicted_ms:.3f} ms; measured "
        f"{plan.measured_input_ms:.3f} -> {plan.measured_output_ms:.3f} ms on {plan.backend}"
        f" = {plan.measured_speedup:.2f}x (target {plan.target_speedup or 'max'}x)"
    )


def cmd_compress(argv: list[str]) -> int:
    from onnxmerge.api import check_outputs, load
    from onnxmerge.compress import compress, from_plan, write_outputs
    from onnxmerge.graph import parse_input_shapes
    from onnxmerge.plan import Plan

    parser = _parser()
    a = parser.parse_args(argv)
    if a.speedup is None and a.from_plan is None:
        parser.error("--speedup is required (or --from-plan PLAN_JSON)")
    plan_path = a.plan or str(Path(a.output).with_suffix("")) + ".plan.json"
    outputs = [a.output, plan_path] + ([a.finetune_graph] if a.finetune_graph else [])
    check_outputs(a.input, outputs, a.external_data_dir, [a.from_plan] if a.from_plan else [])
    shapes = parse_input_shapes(a.input_shapes)
    source = load(a.input, shapes, a.external_data_dir)
    common = {
        "backend": a.backend,
        "backend_options": _backend_options(a),
        "calib": a.calib,
        "calib_count": a.calib_count,
        "calibrate": not a.no_calibrate,
        "ridge": a.ridge,
    }
    if a.from_plan is not None:
        res = from_plan(source, Plan.load(a.from_plan), **common)
    else:
        res = compress(
            source,
            a.speedup,
            method=a.method,
            calibrate_importance=not (a.no_calibrate or a.plain_importance),
            cache_dir=a.cache,
            max_kernel=a.max_kernel,
            **common,
        )
    write_outputs(res, source, a.output, plan_path, a.finetune_graph, shapes)
    _report(res)
    print(
        f"wrote {a.output} and {plan_path}"
        + (f" and {a.finetune_graph}" if a.finetune_graph else "")
    )
    if a.finetune_graph:
        print(
            f"after fine-tuning {a.finetune_graph}, merge exactly this plan's groups: "
            f"onnxmerge fuse {a.finetune_graph} OUT.onnx --plan {plan_path}"
        )
    return 0


def cmd_profile(argv: list[str]) -> int:
    from onnxmerge.api import analyze
    from onnxmerge.candidates import enumerate_candidates
    from onnxmerge.graph import parse_input_shapes
    from onnxmerge.latency import LatencyTable, get_backend, time_model

    p = ArgumentParser(
        prog="onnxmerge profile", description="Time every candidate merged conv of a model."
    )
    p.add_argument("model")
    _backend_args(p)
    a = p.parse_args(argv)
    proto, _, m = analyze(a.model, parse_input_shapes(a.input_shapes), a.external_data_dir)
    chains = [mc.chain for mc in m.chains if mc.mergeable]
    cands = enumerate_candidates(chains, max_kernel=a.max_kernel)
    be = get_backend(a.backend, **_backend_options(a))
    with LatencyTable(a.cache, be) as table:
        lat = table.measure_all([c.signature for c in cands], subtract_overhead=True)
        stats = table.stats
    covered = sum(lat[c.signature] for c in cands if c.unchanged)
    total = time_model(proto, be)
    print(
        f"{len(cands)} candidates, {len(lat)} distinct convs: {stats.hits} from cache, "
        f"{stats.new} measured ({table.path})"
    )
    print(
        f"model {total.median_ms:.3f} ms end to end on {be.name}; its chain convs sum to "
        f"{covered:.3f} ms in the table"
    )
    return 0


def cmd_demo(argv: list[str]) -> int:
    """Build the embedded example (a half-width ResNet-18 at 96x96) and compress it."""
    from onnxmerge import zoo
    from onnxmerge.graph import save_model

    p = ArgumentParser(
        prog="onnxmerge demo", description="Compress a built-in example model end to end."
    )
    p.add_argument("folder", nargs="?", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--speedup", type=float, default=1.2)
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
        ]
    )
