"""Argument setup shared by the commands: parsers that fail in one line, common flag groups.

Lists (backends, methods) come from their registries; defaults are the API's.
"""

from __future__ import annotations

import argparse
import math
import sys

from onnxmerge.errors import OnnxMergeError


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or False (the help text then says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error (missing argument, unknown flag, bad value) is one line.

    It raises OnnxMergeError, so main() prints `onnxmerge: error: ...` and exits 2 like for
    every other user error, instead of argparse's usage block.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise OnnxMergeError(f"{message} (see `{self.prog} -h`)")

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's)
        a = super().parse_args(args, namespace)
        # Bars only on a terminal: elsewhere (a log, CI) they cannot erase themselves and
        # leave a line per update behind.
        a.progress = not getattr(a, "quiet", False) and sys.stderr.isatty()
        from onnxmerge.runtime import set_ort_logging

        set_ort_logging(getattr(a, "verbose", False))
        return a


def add_output_args(p: argparse.ArgumentParser, json_help: str | None = None) -> None:
    """-q/-v (and --json where the command has a report), as every command takes them."""
    from onnxmerge import __version__

    p.add_argument("--version", action="version", version=f"onnxmerge {__version__}")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars (shown on a terminal only) or report, the summary only",
    )
    talk.add_argument(
        "-v", "--verbose", action="store_true", help="also ONNX Runtime's own warnings"
    )
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)


def add_input_args(p: argparse.ArgumentParser) -> None:
    """--input-shape and --external-data-dir, with Polygraphy's spelling."""
    p.add_argument(
        "--input-shape",
        "--input-shapes",
        dest="input_shapes",
        nargs="+",
        metavar="NAME:SHAPE",
        help="static shape for a dynamic input, as in Polygraphy: input:[1,3,224,224] "
        "(or input:1x3x224x224); used to analyze and time, the output stays dynamic",
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


def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    """--preprocess, --mean, --std: how images (folders, built-in photos) become inputs."""
    from onnxmerge.calibration.preprocess import MODES

    p.add_argument(
        "--preprocess",
        choices=list(MODES),
        default=None,
        help="how the model expects images, in Keras' names: torch (RGB in [0, 1], ImageNet "
        "mean/std; default), tf (x / 127.5 - 1), caffe (BGR, ImageNet mean subtracted, 0-255), "
        "raw (0-255 pixels); an N x H x W x 3 input gets NHWC images",
    )
    for flag, what in (("--mean", "subtracted"), ("--std", "divided by")):
        p.add_argument(
            flag,
            default=None,
            metavar="R,G,B",
            help=f"per-channel value {what} (0-255 pixel units, the model's channel order; "
            "one value for all), overriding --preprocess's",
        )


def preprocess_of(a: argparse.Namespace):
    """The Preprocess of add_preprocess_args' flags, None when none is given (the default,
    or a plan's). Raises OnnxMergeError for bad values."""
    from onnxmerge.calibration.preprocess import preprocess_from

    if a.preprocess is None and a.mean is None and a.std is None:
        return None
    return preprocess_from(a.preprocess, a.mean, a.std)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags every command shares: add_input_args and --keep."""
    add_input_args(p)
    p.add_argument(
        "--keep",
        nargs="+",
        default=[],
        metavar="NODE_OR_TENSOR",
        help="leave these as they are: a kept conv is neither merged nor pruned, a kept "
        "activation not removed, a kept tensor stays a boundary no merge crosses",
    )


def add_backend_args(p: argparse.ArgumentParser, candidates: bool = True) -> None:
    """The timing flags of compress, profile and fuse (backend list from the registry);
    `candidates` adds --max-kernel."""
    from onnxmerge.latency import DEFAULT_BACKEND, backend_names

    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=backend_names(),
        help="runtime to time on",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size to time at")
    p.add_argument("--threads", type=int, default=None, help="ort-cpu/torch intra-op threads")
    p.add_argument("--fp16", action="store_true", help="time in fp16 (trt, ort-trt)")
    p.add_argument(
        "--device",
        default=None,
        help="torch backend device: cpu or cuda (default cpu)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="latency and importance cache folder (default $ONNXMERGE_CACHE or ~/.cache/onnxmerge)",
    )
    if candidates:
        p.add_argument("--max-kernel", type=int, default=7, help="largest merged kernel considered")
    add_model_args(p)


def backend_options(a: argparse.Namespace) -> dict:
    """The backend keyword arguments the backend flags ask for."""
    opts: dict = {"batch": a.batch}
    if a.threads is not None:
        opts["threads"] = a.threads
    if a.fp16:
        opts["precision"] = "fp16"
    if a.device is not None:
        opts["device"] = a.device
    return opts


def speedup(value: str) -> float:
    """argparse type of --speedup: a number above 1, or 'max' (math.inf)."""
    from onnxmerge.api import parse_speedup

    try:
        return parse_speedup(value)
    except OnnxMergeError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("speedup: ")) from None


def add_width_args(p: argparse.ArgumentParser) -> None:
    """The width-pruning flags of the compress command."""
    w = p.add_argument_group("width pruning (--prune width or both)")
    w.add_argument(
        "--width-importance",
        default="measured",
        choices=("measured", "splamp"),
        help="measured: output distortion on calibration data; splamp: weight norms "
        "(SP-LAMP), no data",
    )
    w.add_argument(
        "--width-align",
        default="auto",
        type=alignment,
        help="channel step of the widths offered (default auto: probed on the backend)",
    )
    w.add_argument(
        "--min-width",
        type=fraction,
        default=0.25,
        help="narrowest width offered, as a fraction of a group's channels",
    )
    w.add_argument(
        "--width-share",
        type=share,
        default=None,
        help="with --prune both: the share of the speedup (in log) asked of width pruning, in "
        "(0, 1] (1: width alone); default auto: 1/3, 1/2, 2/3 and 1 are tried, the least "
        "distorting kept",
    )
    w.add_argument(
        "--width-search",
        default="dp",
        choices=("dp", "evolution"),
        help="dp: the knapsack over per-group importances (SP-LAMP); evolution: then refine it "
        "by the measured distortion of all cuts together (LACP)",
    )
    w.add_argument(
        "--width-selection",
        default=None,
        choices=("obs", "norm"),
        help="which channels a cut keeps: obs, those the consumers' refit needs most on the "
        "calibration data (OBS); norm, the largest weight norms (default: obs, norm with "
        "--width-importance splamp)",
    )


def share(value: str) -> float | str:
    """--width-share: "auto" or a number in (0, 1]."""
    if value == "auto":
        return value
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a number in (0, 1], got {value!r}"
        ) from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return x


def fraction(value: str) -> float:
    """--min-width: a number in (0, 1]."""
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value!r}")
    return x


def add_groups_args(p: argparse.ArgumentParser) -> None:
    """inspect's --groups and the alignment it counts prunable groups at."""
    p.add_argument(
        "--groups",
        action="store_true",
        help="show the channel dependency groups (what width pruning removes together)",
    )
    p.add_argument(
        "--width-align",
        type=alignment,
        default=None,
        metavar="N|auto",
        help="with --groups: count as prunable only groups at least 2N wide, as compress does at "
        "channel alignment N; 'auto' probes the backend as compress does (default: compress's "
        "probe from --cache when it holds one, else 1)",
    )


def positive_int(value: str) -> int:
    """A positive integer (inspect --width-align)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def alignment(value: str) -> int | str:
    """--width-align: "auto" or a positive int."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a positive integer, got {value!r}"
        ) from None
