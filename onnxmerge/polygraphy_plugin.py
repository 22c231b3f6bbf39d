"""`polygraphy run in.onnx --onnxrt --onnxmerge --onnxmerge-speedup 1.5`.

A `polygraphy run` plugin (entry point `polygraphy.run.plugins` in pyproject.toml): Polygraphy
calls export_argument_groups() and appends the groups to its own. `--onnxmerge` adds a runner
that compresses the model with MergeConvs and runs the result beside the other runners, so
Polygraphy's comparator reports how far the compressed model's outputs are from the original's.
"""

from __future__ import annotations

import ast
import inspect

from polygraphy import util
from polygraphy.logger import G_LOGGER
from polygraphy.tools.args import (
    ModelArgs,
    OnnxLoadArgs,
    OnnxrtSessionArgs,
    TrtLoadEngineArgs,
    TrtRunnerArgs,
    TrtSaveEngineBytesArgs,
)
from polygraphy.tools.args import util as args_util
from polygraphy.tools.args.base import BaseArgs, BaseRunnerArgs
from polygraphy.tools.script import Script, make_invocable

RUNNER_OPT = "onnxmerge"


class _OwnLoaders:
    """A Script whose new loader lines are never shared with another runner's.

    Polygraphy 0.53's Script.add_var(force=True) on a line the script already holds re-points
    that line to the new name, so the runner that added it first loses its definition; the
    TensorRT groups add their "parser_trt_config" that way (`polygraphy run --trt --trt` hits
    it too). A comment at the end of each of our lines keeps them apart.
    """

    def __init__(self, script):
        self._script = script

    def __getattr__(self, name):
        return getattr(self._script, name)

    def add_var(self, var_str, var_id, category="Variables", force=None):
        line = Script.String(f"{var_str.unwrap()}  # {RUNNER_OPT} runner", safe=True, inline=True)
        return self._script.add_var(line, var_id, category=category, force=force)

    def add_loader(self, loader_str, loader_id, force=None):
        return self.add_var(loader_str, loader_id, category="Loaders", force=force)


def _parse_options(specs):
    options = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        if not sep or not key.isidentifier():
            G_LOGGER.critical(f"--onnxmerge-option wants KEY=VALUE, got: {spec!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def _check_options(options):
    from onnxmerge.api import compress

    known = [p for p in inspect.signature(compress).parameters if p not in ("model", "speedup")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        G_LOGGER.critical(
            f"--onnxmerge-option: compress() takes no {', '.join(unknown)}.\n"
            f"Note: it takes {', '.join(known)}"
        )


class MergeArgs(BaseArgs):
    """
    onnxmerge: compressing the model with onnxmerge for the --onnxmerge runner.

    Depends on:

        - ModelArgs
        - OnnxLoadArgs
    """

    def add_parser_args_impl(self):
        self.group.add_argument(
            "--onnxmerge-speedup",
            default=None,
            help="End-to-end speedup the compressed model must reach, or 'max' for the fastest "
            "plan (required with --onnxmerge)",
        )
        from onnxmerge.kinds import DEFAULT_PRUNE, PRUNE_MODES
        from onnxmerge.latency import backend_names
        from onnxmerge.solve import METHODS

        self.group.add_argument(
            "--onnxmerge-backend",
            choices=backend_names(),
            default=None,
            help="Runtime onnxmerge times candidates on. Defaults to trt when --trt is selected, "
            "else ort-cpu. With trt the compressed model also runs on TensorRT, otherwise on "
            "ONNX-Runtime",
        )
        self.group.add_argument(
            "--onnxmerge-method",
            choices=METHODS,
            default=None,
            help=f"Compression method. Defaults to {METHODS[0]}",
        )
        self.group.add_argument(
            "--onnxmerge-prune",
            choices=PRUNE_MODES,
            default=None,
            help="What to remove: depth (layers, merged), width (channels) or both. "
            f"Defaults to {DEFAULT_PRUNE}",
        )
        self.group.add_argument(
            "--onnxmerge-calib",
            default=None,
            help="Path of an .npz of calibration inputs (N,C,H,W). Defaults to random inputs",
        )
        self.group.add_argument(
            "--onnxmerge-eval",
            nargs="+",
            default=None,
            help="Folders of images or .npz files the summary scores the compressed model on "
            "(neither the refit nor the search sees them). Defaults to built-in photos the "
            "calibration did not use",
        )
        self.group.add_argument(
            "--onnxmerge-cache",
            default=None,
            help="Latency cache folder. Defaults to $ONNXMERGE_CACHE or ~/.cache/onnxmerge",
        )
        self.group.add_argument(
            "--onnxmerge-option",
            nargs="+",
            default=None,
            metavar="KEY=VALUE",
            help="Other keyword arguments for onnxmerge.api.compress, e.g. calibrate=False "
            "calib_count=4 (values are Python literals, else strings); these override the flags "
            "above",
        )
        self.group.add_argument(
            "--onnxmerge-distill",
            nargs="*",
            default=None,
            metavar="FOLDER_OR_NPZ",
            help="Distill the compressed model from the original on these images (folders or "
            ".npz files; none: the built-in photos) before running it. Needs PyTorch",
        )
        self.group.add_argument(
            "--onnxmerge-distill-minutes",
            type=float,
            default=None,
            help="Minutes of distillation with --onnxmerge-distill. Defaults to 10",
        )
        self.group.add_argument(
            "--onnxmerge-save",
            default=None,
            help="Path to save the compressed ONNX model to",
        )

    def parse_impl(self, args):
        """
        Parses command-line arguments and populates the following attributes:

        Attributes:
            speedup (Union[float, str]): The speedup to reach, or "max".
            backend (str): The onnxmerge latency backend.
            method (str): The compression method, or None for onnxmerge's default.
            prune (str): What to remove: "depth", "width" or "both" (compress's kind).
            calib (str): Path of the calibration inputs, or None.
            eval_data (List[str]): Data the summary scores on, or None.
            cache_dir (str): The latency cache folder, or None.
            save_path (str): Where to save the compressed model, or None.
            distill (List[str]): Data to distill the compressed model on ([]: the built-in
                    photos), or None for no distillation.
            distill_minutes (float): Minutes of distillation, or None for the default.
            options (Dict[str, object]): Other keyword arguments for compress().
        """
        speedup = args_util.get(args, "onnxmerge_speedup")
        self.method = args_util.get(args, "onnxmerge_method")
        from onnxmerge.kinds import DEFAULT_PRUNE

        self.prune = args_util.get(args, "onnxmerge_prune") or DEFAULT_PRUNE
        self.calib = args_util.get(args, "onnxmerge_calib")
        self.eval_data = args_util.get(args, "onnxmerge_eval")
        self.cache_dir = args_util.get(args, "onnxmerge_cache")
        self.save_path = args_util.get(args, "onnxmerge_save")
        self.distill = args_util.get(args, "onnxmerge_distill")
        self.distill_minutes = args_util.get(args, "onnxmerge_distill_minutes")
        if self.distill_minutes is not None and self.distill is None:
            G_LOGGER.critical("--onnxmerge-distill-minutes needs --onnxmerge-distill")
        runners = args_util.get(args, "runners") or []
        self.backend = args_util.get(args, "onnxmerge_backend") or (
            "trt" if "trt" in runners else "ort-cpu"
        )
        self.options = _parse_options(args_util.get(args, "onnxmerge_option") or [])
        self.backend = self.options.pop("backend", self.backend)
        # Checked here: the other runners would otherwise run first and fail only afterwards.
        self.speedup = None
        if RUNNER_OPT in runners:
            if speedup is None:
                G_LOGGER.critical(
                    "--onnxmerge needs --onnxmerge-speedup.\n"
                    "Note: e.g. --onnxmerge-speedup 1.5 asks for a model 1.5x faster, 'max' for "
                    "the fastest plan"
                )
            from onnxmerge.compress import parse_speedup
            from onnxmerge.errors import OnnxMergeError

            try:
                value = parse_speedup(speedup)
            except OnnxMergeError as exc:
                G_LOGGER.critical(f"--onnxmerge-speedup: {exc}")
            self.speedup = "max" if value == float("inf") else value  # a literal for the script
            _check_options(self.options)

    def _source(self, script):
        model = self.arg_groups[ModelArgs]
        load = self.arg_groups[OnnxLoadArgs]
        if not model.model_type or not model.model_type.is_onnx():
            G_LOGGER.critical(f"--onnxmerge needs an ONNX model, got: {model.path}")
        if load.ignore_external_data:
            G_LOGGER.critical("--onnxmerge needs the model's weights: drop --ignore-external-data")
        # onnxmerge loads and checks the file itself (external data from Polygraphy's
        # --external-data-dir, see add_to_script) and applies --input-shapes.
        return model.path

    def add_to_script_impl(self, script, source=None, serialize_model=None):
        """
        Args:
            source (str):
                    The model for MergeConvs: a path or the name of an ONNX loader in the
                    script. Defaults to the model given on the command line.
            serialize_model (bool): Whether to serialize the compressed model to bytes.

        Returns:
            str: The name of the loader of the compressed model.
        """
        if source is None:
            source = self._source(script)
        shapes = {
            name: tuple(meta.shape)
            for name, meta in self.arg_groups[ModelArgs].input_shapes.items()
            if meta.shape is not None and all(isinstance(d, int) for d in meta.shape)
        }
        kwargs = {
            "backend": self.backend,
            "method": self.method,
            "kind": self.prune,
            "calib": self.calib,
            "eval_data": self.eval_data,
            "cache_dir": self.cache_dir,
            "input_shapes": shapes or None,
            **self.options,
        }
        if self.distill is not None:
            kwargs["distill"] = list(self.distill)
            if self.distill_minutes is not None:
                kwargs["distill_options"] = {"minutes": self.distill_minutes}
        external_data_dir = self.arg_groups[OnnxLoadArgs].external_data_dir
        if external_data_dir is not None and source == self.arg_groups[ModelArgs].path:
            kwargs["external_data_dir"] = external_data_dir
        script.add_import(imports=["MergeConvs"], frm="onnxmerge.polygraphy_loader")
        name = script.add_loader(
            make_invocable("MergeConvs", source, speedup=self.speedup, **kwargs), "merge_convs"
        )
        if self.arg_groups[OnnxLoadArgs].convert_to_fp16:
            script.add_import(imports=["ConvertToFp16"], frm="polygraphy.backend.onnx")
            name = script.add_loader(make_invocable("ConvertToFp16", name), "convert_to_fp16")
        if self.save_path:
            script.add_import(imports=["SaveOnnx"], frm="polygraphy.backend.onnx")
            name = script.add_loader(
                make_invocable("SaveOnnx", name, path=self.save_path), "save_merged_onnx"
            )
        if serialize_model:
            script.add_import(imports=["BytesFromOnnx"], frm="polygraphy.backend.onnx")
            name = script.add_loader(make_invocable("BytesFromOnnx", name), "serialize_onnx")
        return name


class MergeRunnerArgs(BaseRunnerArgs):
    """
    onnxmerge Inference: running the onnxmerge-compressed model.

    Depends on:

        - MergeArgs
        - OnnxLoadArgs
        - OnnxrtSessionArgs: unless the onnxmerge backend is trt
        - TrtLoadEngineArgs: if the onnxmerge backend is trt
        - TrtRunnerArgs: if the onnxmerge backend is trt
        - TrtSaveEngineBytesArgs: if the onnxmerge backend is trt
    """

    def get_name_opt_impl(self):
        return "onnxmerge", RUNNER_OPT

    def get_extra_help_text_impl(self):
        return (
            "Compresses the model with onnxmerge first (see --onnxmerge-speedup) and runs it "
            "on TensorRT if --onnxmerge-backend is trt, else on ONNX-Runtime"
        )

    def add_to_script_impl(self, script):
        merge = self.arg_groups[MergeArgs]
        if merge.backend != "trt":
            session = self.arg_groups[OnnxrtSessionArgs].add_to_script(
                script, onnx_name=merge.add_to_script(script, serialize_model=True)
            )
            script.add_import(imports=["OnnxrtRunner"], frm="polygraphy.backend.onnxrt")
            script.add_runner(
                make_invocable("OnnxrtRunner", session, name=f"{RUNNER_OPT}-onnxrt-runner")
            )
            return

        # Polygraphy's TensorRT groups take their ONNX model from OnnxLoadArgs. Swap in the
        # compressed model while they add their loaders, so that every TensorRT flag (--fp16,
        # profiles from --input-shapes, plugins, ...) applies to it as to the original.
        # --save-engine stays the original's.
        source = merge._source(script)

        def compressed_onnx(_, disable_custom_outputs=None, serialize_model=None):
            return merge.add_to_script(script, source=source, serialize_model=serialize_model)

        onnx_swap = {
            "add_to_script": compressed_onnx,
            "must_use_onnx_loader": lambda disable_custom_outputs=None: True,
        }
        no_save = {"add_to_script": lambda script, loader_name: loader_name}
        with (
            util.TempAttrChange(self.arg_groups[OnnxLoadArgs], onnx_swap),
            util.TempAttrChange(self.arg_groups[TrtSaveEngineBytesArgs], no_save),
        ):
            engine = self.arg_groups[TrtLoadEngineArgs].add_to_script(_OwnLoaders(script))
        trt = self.arg_groups[TrtRunnerArgs]
        script.add_import(imports=["TrtRunner"], frm="polygraphy.backend.trt")
        script.add_runner(
            make_invocable(
                "TrtRunner",
                engine,
                name=f"{RUNNER_OPT}-trt-runner",
                optimization_profile=trt.optimization_profile,
                allocation_strategy=trt.allocation_strategy,
                weight_streaming_budget=trt.weight_streaming_budget,
                weight_streaming_percent=trt.weight_streaming_percent,
            )
        )


def export_argument_groups():
    """The `polygraphy.run.plugins` entry point: the argument groups to add to `run`."""
    return [MergeArgs(), MergeRunnerArgs()]
