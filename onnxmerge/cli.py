"""Command line: argument parsing and printing only; the work is in onnxmerge.api."""

from __future__ import annotations

import argparse
import json
import os
import sys

from onnxmerge.errors import OnnxMergeError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error (missing argument, unknown flag, bad value) is one line.

    It raises OnnxMergeError, so main() prints `onnxmerge: error: ...` and exits 2 like for
    every other user error, instead of argparse's usage block.
    """

    def error(self, message: str):
        raise OnnxMergeError(f"{message} (see `{self.prog} -h`)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags every command shares, with Polygraphy's spelling."""
    p.add_argument(
        "--input-shape",
        "--input-shapes",
        dest="input_shapes",
        nargs="+",
        metavar="NAME:SHAPE",
        help="static shape for a dynamic input, as in Polygraphy: input:[1,3,224,224] "
        "(or input:1x3x224x224)",
    )
    p.add_argument(
        "--external-data-dir",
        "--load-external-data",
        "--ext",
        dest="external_data_dir",
        metavar="DIR",
        help="folder holding the model's external data, as in Polygraphy (default: the "
        "model's folder)",
    )


def _parser_inspect() -> ArgumentParser:
    p = ArgumentParser(
        prog="onnxmerge inspect", description="Show the conv chains onnxmerge finds in a model."
    )
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_model_args(p)
    return p


def _parser_fuse() -> ArgumentParser:
    p = ArgumentParser(
        prog="onnxmerge fuse",
        description="Merge every activation-free run of convs into one Conv. By default only "
        "merges that are exact everywhere (the fine-tune form); --direct merges all runs and "
        "reports the border error. With --plan, exactly the plan's groups of its fine-tune "
        "graph are merged instead.",
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--direct",
        action="store_true",
        help="also merge runs whose later convs pad (exact in the interior only)",
    )
    p.add_argument(
        "--plan",
        default=None,
        metavar="PLAN_JSON",
        help="merge exactly the groups of this plan (the .plan.json written with the "
        "--finetune-graph INPUT), nothing else; a plan that does not fit INPUT is an error",
    )
    add_model_args(p)
    return p


def _print_inspect(report: dict) -> None:
    for c in report["chains"]:
        note = f"  [{c['note']}]" if c["note"] else ""
        print(f"{c['name']}: {c['length']} convs, {c['valid_segments']} valid segments{note}")
        print(f"  input from {c['input_from']}; output to {c['output_to']}")
        res = {r["end"]: r for r in c["residuals"]}
        brk = {b["position"]: b["reason"] for b in c["breaks"]}
        for pos in c["positions"]:
            g = pos["groups"]
            kind = "dw" if g > 1 and g == pos["in_channels"] else (f"g{g}" if g > 1 else "")
            line = (
                f"  {pos['position']:>3} {pos['conv']:<28} {pos['kernel'][0]}x{pos['kernel'][1]}"
                f" s{pos['stride'][0]} d{pos['dilation'][0]} {kind:<4}"
                f" {pos['in_channels']:>5}->{pos['out_channels']:<5}"
                f" @{pos['in_hw'][0]}x{pos['in_hw'][1]:<4} act={pos['activation'] or '-'}"
            )
            if pos["position"] in res:
                r = res[pos["position"]]
                line += f"  residual from {r['start']}" + (
                    f" via {r['shortcut']}" if r["shortcut"] else ""
                )
            if pos["position"] in brk:
                line += f"  BREAK: {brk[pos['position']]}"
            print(line)
    for u in report["unmatched"]:
        print(f"not in a chain: {u['conv']} ({u['reason']})")
    t = report["total"]
    print(
        f"total: {t['chains']} chains, {t['convs']} convs, {t['residuals']} residual intervals,"
        f" {t['valid_segments']} valid segments"
    )


def _cmd_inspect(argv: list[str]) -> int:
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes

    a = _parser_inspect().parse_args(argv)
    report = api.inspect(a.model, parse_input_shapes(a.input_shapes), a.external_data_dir)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        _print_inspect(report)
    return 0


def _cmd_fuse(argv: list[str]) -> int:
    from onnxmerge import api
    from onnxmerge.graph import parse_input_shapes
    from onnxmerge.plan import Plan

    a = _parser_fuse().parse_args(argv)
    api.check_outputs(a.input, [a.output], a.external_data_dir, [a.plan] if a.plan else [])
    shapes = parse_input_shapes(a.input_shapes)
    plan = Plan.load(a.plan) if a.plan else None  # a bad plan fails before the model loads
    source = api.load(a.input, shapes, a.external_data_dir)
    _, r = api.fuse(source, a.output, direct=a.direct, input_shapes=shapes, plan=plan)
    what = f"{r.merged_groups} groups of {a.plan}" if a.plan else f"{r.merged_groups} groups"
    print(f"merged {what}: {r.convs_before} -> {r.convs_after} Conv nodes")
    if r.skipped_inexact:
        print(
            f"left {r.skipped_inexact} activation-free runs unmerged: a later conv pads, so a "
            "merge would be exact in the interior only (--direct merges them)"
        )
    for g in r.groups:
        border = f"; border {g.border}" if g.border is not None else " (exact by construction)"
        if g.border is not None or g.interior.max_rel > 1e-4:
            print(f"  {g.tensor}: interior {g.interior}{border}")
    for name, d in r.outputs.items():
        print(f"output {name}: {d} vs input (ONNX Runtime, random input)")
    print(f"wrote {a.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "inspect":
            return _cmd_inspect(argv[1:])
        if argv and argv[0] == "fuse":
            return _cmd_fuse(argv[1:])
        if argv and argv[0] == "profile":
            from onnxmerge.cli_compress import cmd_profile

            return cmd_profile(argv[1:])
        if argv and argv[0] == "demo":
            from onnxmerge.cli_compress import cmd_demo

            return cmd_demo(argv[1:])
        from onnxmerge.cli_compress import cmd_compress

        return cmd_compress(argv)
    except OnnxMergeError as exc:
        print(f"onnxmerge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxmerge: interrupted (cached measurements are kept)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless debugging
        if os.environ.get("ONNXMERGE_DEBUG"):
            raise
        print(
            f"onnxmerge: internal error: {type(exc).__name__}: {exc} "
            "(set ONNXMERGE_DEBUG=1 for a traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
