"""TensorRT backend through Polygraphy: build an engine per model, time it with device buffers.

Engines are built with a shared on-disk timing cache, so the many similar candidate convs of
a latency table reuse tactic timings instead of re-profiling each one. Inputs are copied to
the GPU once and outputs stay there, so ``TrtRunner``'s timer sees execution only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxmerge.cache import default_cache_dir
from onnxmerge.errors import OnnxMergeError
from onnxmerge.latency.backend import Backend, gpu_name, require


class TrtBackend(Backend):
    """TensorRT (fp32, fp16 or tf32 kernels) via Polygraphy's loaders and TrtRunner."""

    name = "trt"
    precisions = ("fp32", "fp16", "tf32")

    def __init__(
        self,
        *,
        device_id: int = 0,
        timing_cache: str | Path | None = None,
        builder_optimization_level: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self._trt = require("tensorrt", self.name, "TensorRT", "trt")
        if device_id != 0:
            raise OnnxMergeError("backend 'trt' times on GPU 0; set CUDA_VISIBLE_DEVICES instead")
        self.device_id = device_id
        self.timing_cache = (
            Path(timing_cache) if timing_cache else default_cache_dir() / "trt-timing.cache"
        )
        self.builder_optimization_level = builder_optimization_level
        self._gpu: str | None = None

    def _fingerprint_impl(self) -> dict[str, Any]:
        if self._gpu is None:
            self._gpu = gpu_name(self.device_id)
        return {
            "tensorrt": self._trt.__version__,
            "device": self._gpu,
            "builder_optimization_level": self.builder_optimization_level,
        }

    def load(self, onnx_bytes: bytes) -> Any:
        """Build the engine now (not lazily), so build time never lands in a timing."""
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxBytes,
            TrtRunner,
        )

        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        config = CreateConfig(
            fp16=self.precision == "fp16",
            tf32=self.precision == "tf32",
            load_timing_cache=str(self.timing_cache),
            builder_optimization_level=self.builder_optimization_level,
        )
        build = EngineFromNetwork(
            NetworkFromOnnxBytes(onnx_bytes),
            config=config,
            save_timing_cache=str(self.timing_cache),
        )
        try:
            engine = build()
        except Exception as e:  # Polygraphy raises PolygraphyException on parse/build failures
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxMergeError(f"backend 'trt' cannot build the model: {first}") from None
        runner = TrtRunner(engine)
        runner.activate()
        return runner

    def prepare(self, session: Any, feed: dict[str, np.ndarray]) -> Any:
        from polygraphy.cuda import DeviceArray
        from polygraphy.datatype import DataType

        device_feed = {}
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            buffer = DeviceArray(shape=array.shape, dtype=DataType.from_dtype(array.dtype))
            device_feed[name] = buffer.copy_from(array)
        return session, device_feed

    def unprepare(self, prepared: Any) -> None:
        for buffer in prepared[1].values():
            buffer.free()

    def release(self, session: Any) -> None:
        session.deactivate()

    def _run_once(self, prepared: Any) -> None:
        runner, feed = prepared
        runner.infer(feed, check_inputs=False, copy_outputs_to_host=False)

    def _time_once(self, prepared: Any) -> float:
        """Polygraphy's own timer brackets execute + stream sync, not its Python checks."""
        runner = prepared[0]
        self._run_once(prepared)
        return runner.last_inference_time()

    def run(self, session: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.infer(feed).values())
