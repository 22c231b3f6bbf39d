"""MergeConvs: onnxmerge as a Polygraphy loader, composable with Polygraphy's own loaders.

from polygraphy.backend.onnx import BytesFromOnnx, OnnxFromPath
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from onnxmerge import MergeConvs

merged = MergeConvs(OnnxFromPath("in.onnx"), speedup=1.5)
with OnnxrtRunner(SessionFromOnnx(BytesFromOnnx(merged))) as runner:
    outputs = runner.infer(feed)

`distill=["photos/"]` then trains the compressed model toward the original (as
`onnxmerge ... --distill photos/`; needs onnxmerge[torch]).
"""

from __future__ import annotations

from polygraphy import mod, util
from polygraphy.backend.base import BaseLoader
from polygraphy.logger import G_LOGGER


@mod.export(funcify=True)
class MergeConvs(BaseLoader):
    """
    Functor that compresses an ONNX model with onnxmerge (``onnxmerge.api.compress``).
    """

    def __init__(
        self,
        model,
        speedup,
        external_data_dir=None,
        distill=None,
        distill_options=None,
        **compress_kwargs,
    ):
        """
        Compresses an ONNX model to run ``speedup`` times faster.

        Args:
            model (Union[onnx.ModelProto, bytes, str, os.PathLike, Callable() -> one of those]):
                    The model: a ModelProto, its serialized bytes, the path of an ``.onnx`` file
                    or a loader that returns one of these, e.g. ``OnnxFromPath("in.onnx")``.
                    A path is loaded and checked by onnxmerge itself (external data beside
                    the model or in ``external_data_dir``; ``input_shapes`` fix dynamic inputs).
            speedup (Union[float, str]): The end-to-end speedup to reach on ``backend``;
                    above 1.0, or "max" for the fastest plan.
            external_data_dir (str):
                    The folder holding a model path's external data, as Polygraphy's
                    ``--external-data-dir``. Defaults to the model's folder.
            distill (Sequence[str]):
                    Folders of images or ``.npz`` files to distill the compressed model
                    from the original on (``onnxmerge.api.distill_result``; needs PyTorch),
                    ``[]`` for the built-in photos. Defaults to None: no distillation.
            distill_options (Dict[str, object]):
                    Keyword arguments for the distillation (``onnxmerge.api.distill``), e.g.
                    ``{"steps": 200, "device": "cuda"}``. Defaults to ten minutes.
            compress_kwargs:
                    Passed to ``onnxmerge.api.compress`` unchanged, e.g. ``backend``
                    (defaults to ``"ort-cpu"``), ``method``, ``calib``, ``cache_dir``,
                    ``input_shapes``.
        """
        self._model = model
        self.speedup = speedup
        self.external_data_dir = external_data_dir
        self.distill = distill
        options = dict(distill_options or {})
        if "steps" not in options:  # the CLI's budget unless one is given
            options.setdefault("minutes", 10)
        self.distill_options = options
        self.compress_kwargs = compress_kwargs

    @util.check_called_by("__call__")
    def call_impl(self):
        """
        Returns:
            onnx.ModelProto: The compressed model.
        """
        import onnx

        from onnxmerge.api import check_data, compress, distill_result
        from onnxmerge.errors import OnnxMergeError

        model, _ = util.invoke_if_callable(self._model)
        if isinstance(model, bytes):
            model = onnx.load_model_from_string(model)
        options = dict(self.compress_kwargs)
        if self.external_data_dir is not None and not isinstance(model, onnx.ModelProto):
            options["external_data_dir"] = self.external_data_dir
        try:
            if self.distill is not None:  # a typo or a missing torch fails before compressing
                check_data(self.distill, "distill", self.distill_options)
            result = compress(model, self.speedup, **options)
            if self.distill is not None:
                shared = {
                    k: options[k] for k in ("input_shapes", "external_data_dir") if k in options
                }
                distill_result(result, model, self.distill, **shared, **self.distill_options)
        except OnnxMergeError as exc:
            G_LOGGER.critical(f"onnxmerge: {exc}")
        for line in result.summary():
            G_LOGGER.info(f"onnxmerge: {line}")
        return result.model
