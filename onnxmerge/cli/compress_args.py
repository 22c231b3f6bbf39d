"""The compress command's flags (onnxmerge IN OUT --speedup X ...)."""

from __future__ import annotations

from onnxmerge.cli.args import (
    ArgumentParser,
    add_backend_args,
    add_output_args,
    add_preprocess_args,
    add_width_args,
    speedup,
)
from onnxmerge.cli.finetune import add_distill_args

SUMMARY_JSON = "print the summary (before -> after, fidelity) as JSON instead of text"


def compress_parser() -> ArgumentParser:
    """The parser of `onnxmerge IN OUT --speedup X [...]` (the default command)."""
    from onnxmerge.kinds import DEFAULT_PRUNE, PRUNE_MODES
    from onnxmerge.solve import METHODS

    p = ArgumentParser(
        prog="onnxmerge",
        description="Make an ONNX CNN faster: shallower (remove activations, prune and merge "
        "conv layers) and/or narrower (remove whole channels), chosen by dynamic programming "
        "over measured latency and importance. "
        "Other commands: inspect, fuse, profile, demo (onnxmerge COMMAND -h).",
    )
    p.add_argument("input", help="the ONNX model to compress")
    p.add_argument("output", help="where to write the compressed model")
    p.add_argument(
        "--speedup",
        type=speedup,
        help="end-to-end speedup to reach, or 'max' for the fastest plan (required unless "
        "--from-plan)",
    )
    p.add_argument(
        "--prune",
        default=DEFAULT_PRUNE,
        choices=PRUNE_MODES,
        help="what to remove: depth (activations and conv layers, merging what stays), width "
        f"(whole channels at the backend's fast widths) or both (width, then depth; default: "
        f"{DEFAULT_PRUNE})",
    )
    p.add_argument(
        "--method",
        default=METHODS[0],
        choices=METHODS,
        help="layermerge: one DP over segments and pruned variants (LayerMerge, ICML 2024); "
        "depth: two-stage DP, all convs kept (Kim et al., ICML 2023)",
    )
    p.add_argument(
        "--calib",
        action="append",
        default=None,
        metavar="FOLDER_OR_NPZ",
        help="calibration data, repeatable: folders of images (ImageNet-normalized centre "
        "crops) or .npz files of input arrays (N,C,H,W), optionally with an integer array "
        "'groups' marking inputs cut from one source; default: built-in natural photos "
        "(onnxmerge[photos])",
    )
    p.add_argument("--calib-count", type=int, default=16, help="calibration inputs to use")
    p.add_argument(
        "--eval",
        action="append",
        default=None,
        metavar="FOLDER_OR_NPZ",
        help="data the summary scores the written network on, repeatable, read as --calib; "
        "neither the refit nor the search sees it (default: built-in photos the calibration "
        "did not use; with --calib of yours, its held-out half, which the search chose on)",
    )
    p.add_argument("--eval-count", type=int, default=32, help="most --eval inputs to score on (32)")
    add_preprocess_args(p)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of everything sampled (same seed, same plan)"
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
        help="ridge strength of the refit, relative to the mean input energy",
    )
    p.add_argument(
        "--plan", default=None, help="where to write the plan JSON (default: OUTPUT.plan.json)"
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
    p.add_argument(
        "--int8",
        action="store_true",
        help="then quantize the compressed network to INT8 (ONNX Runtime static quantization: "
        "QDQ, per-channel weights, calibrated on the calibration inputs) and write that; the "
        "summary sets it beside the input quantized alone (ort-cpu)",
    )
    add_width_args(p)
    add_distill_args(p, "distill-")
    add_backend_args(p)
    add_output_args(p, SUMMARY_JSON)
    return p
