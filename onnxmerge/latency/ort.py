"""ONNX Runtime backends: CPU, and the CUDA / TensorRT execution providers of onnxruntime-gpu.

Sessions are built the way a deployment builds them (all graph optimizations, so Conv+act
and residual-Add fusions happen), with fixed threads and no spinning: on small CPUs an
idle-spinning pool makes repeated measurements swing several-fold.

Layout. On x86 the CPU provider runs convs in a blocked layout (NCHWc, its NCHWc
transformer): a network reorders its input once and its output once, while a conv timed
alone reorders both. Measured on 1 x 96 x 48 x 48 (2 threads): a depthwise 3x3 conv takes
0.08 ms between two reorders of 0.07 ms each, so one-conv models over-priced the depthwise
convs of an SE network 2.8x and its 1x1 convs 1.8x against the network's own profile, and
merging a 1x1 conv into the depthwise conv after it looked faster than it is (predicted
1.43x, measured 1.10-1.15x). `boundary_ms` reads those reorders from ORT's profiler.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from onnxmerge.cache import default_cache_dir
from onnxmerge.errors import OnnxMergeError
from onnxmerge.latency.backend import Backend, cpu_name, default_threads, gpu_name

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Nodes of ORT's NCHWc transformer that convert between NCHW and its blocked layout.
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")
# Convs, and activations they run with (spelled as ORT's optimizer leaves them).
CONV_OPS = frozenset(
    "Conv FusedConv QuickGelu Relu Clip Sigmoid HardSigmoid HardSwish LeakyRelu Tanh Gelu "
    "Elu Selu Softplus Mish".split()
)
PROFILE_RUNS = 30  # runs profiled for boundary_ms; the first third is taken as warm-up
# ORT's errors for a model it cannot take; they all derive from Exception only.
_LOAD_ERRORS = (
    _state.Fail,
    _state.InvalidArgument,
    _state.InvalidGraph,
    _state.InvalidProtobuf,
    _state.NotImplemented,
    _state.EPFail,
    _state.RuntimeException,
)


class _OrtBackend(Backend):
    """Shared session building; subclasses choose the execution providers."""

    provider: ClassVar[str] = "CPUExecutionProvider"

    def __init__(
        self,
        *,
        threads: int | None = None,
        spin: bool = False,
        opt_level: str = "all",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if opt_level not in OPT_LEVELS:
            raise OnnxMergeError(
                f"unknown opt_level {opt_level!r}; choose one of {list(OPT_LEVELS)}"
            )
        self.threads = threads or default_threads()
        self.spin = spin
        self.opt_level = opt_level

    def _providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def _device(self) -> str:
        return cpu_name()

    def _fingerprint_impl(self) -> dict[str, Any]:
        return {
            "onnxruntime": ort.__version__,
            "providers": self._providers(),
            "device": self._device(),
            "threads": self.threads,
            "spin": self.spin,
            "opt_level": self.opt_level,
        }

    def session_options(self) -> ort.SessionOptions:
        """Session options as a deployment sets them: fixed threads, no spinning, all graph
        optimizations (so Conv + activation and residual Add fusions happen)."""
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = OPT_LEVELS[self.opt_level]
        spin = "1" if self.spin else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        from onnxmerge import runtime

        so.log_severity_level = runtime.ORT_LOG_SEVERITY  # fallbacks are checked below
        return so

    def load(self, onnx_bytes: bytes) -> ort.InferenceSession:
        return self.load_with(onnx_bytes, self.session_options())

    def load_with(self, onnx_bytes: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
        """A session of `onnx_bytes` with `options` (load's, or profiling ones)."""
        try:
            sess = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=self._providers()
            )
        except _LOAD_ERRORS as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxMergeError(f"backend {self.name!r} cannot load the model: {first}") from None
        if sess.get_providers()[0] != self.provider:
            raise OnnxMergeError(
                f"backend {self.name!r}: ONNX Runtime could not start {self.provider} "
                "(no usable GPU or CUDA/TensorRT libraries?)"
            )
        return sess

    def run(self, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feed)


class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime's default CPU execution provider (MLAS kernels)."""

    name = "ort-cpu"

    def prepare(self, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Any:
        return session, [o.name for o in session.get_outputs()], feed

    def _run_once(self, prepared: Any) -> None:
        session, names, feed = prepared
        session.run(names, feed)

    def profile(self, onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> dict[str, float]:
        """Median per-run kernel time (ms) of each op type of the optimized model, from a
        profiled session of PROFILE_RUNS runs (the first third taken as warm-up)."""
        with tempfile.TemporaryDirectory(prefix="onnxmerge-profile-") as tmp:
            so = self.session_options()
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "run")
            session = self.load_with(onnx_bytes, so)
            for _ in range(PROFILE_RUNS):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        runs: dict[tuple[str, str], list[float]] = {}
        for e in events:
            op = e.get("args", {}).get("op_name")
            if e.get("cat") == "Node" and op and e["name"].endswith("_kernel_time"):
                runs.setdefault((op, e["name"]), []).append(e["dur"])  # microseconds
        skip, out = PROFILE_RUNS // 3, {}
        for (op, _), d in runs.items():
            out[op] = out.get(op, 0.0) + statistics.median(d[skip:] or d) / 1e3
        return out

    def boundary_ms(self, onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> float:
        """The median per-run time of the model's layout reorders (LAYOUT_OPS; module
        docstring; ms, 0 when ORT adds none)."""
        return sum(ms for op, ms in self.profile(onnx_bytes, feed).items() if op in LAYOUT_OPS)

    def other_fraction(self, onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> float | None:
        """The fraction of a network's kernel time spent outside convs and activations
        (Backend.other_fraction), from its profile."""
        ops = self.profile(onnx_bytes, feed)
        total = sum(ops.values())
        other = sum(ms for op, ms in ops.items() if op not in CONV_OPS)
        return other / total if total > 0 else None


class _OrtGpuBackend(_OrtBackend):
    """GPU providers: inputs and outputs stay on the device (IOBinding), so no copy is timed."""

    extra: ClassVar[str] = "gpu"
    io_device: ClassVar[str] = "cuda"  # where IOBinding keeps inputs and outputs
    what: ClassVar[str] = "onnxruntime-gpu with CUDA"

    def __init__(self, *, device_id: int = 0, **options: Any) -> None:
        options.setdefault("threads", 1)
        super().__init__(**options)
        if self.provider not in ort.get_available_providers():
            raise OnnxMergeError(
                f"backend {self.name!r} needs {self.what}: pip install 'onnxmerge[{self.extra}]'"
            )
        self.device_id = device_id
        self._gpu: str | None = None

    def _device(self) -> str:
        if self._gpu is None:
            self._gpu = gpu_name(self.device_id)
        return self._gpu

    def prepare(self, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Any:
        io = session.io_binding()
        values = []
        for name, array in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, self.io_device, self.device_id)
            io.bind_ortvalue_input(name, value)
            values.append(value)  # keep the device buffers alive while timing
        for out in session.get_outputs():
            io.bind_output(out.name, self.io_device, self.device_id)
        return session, io, values

    def _run_once(self, prepared: Any) -> None:
        session, io, _ = prepared
        session.run_with_iobinding(io)
        io.synchronize_outputs()


class OrtCudaBackend(_OrtGpuBackend):
    """onnxruntime-gpu's CUDA execution provider."""

    name = "ort-cuda"
    provider = "CUDAExecutionProvider"

    def _providers(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]


class OrtTrtBackend(_OrtGpuBackend):
    """onnxruntime-gpu's TensorRT execution provider, with engine and timing caches on disk."""

    name = "ort-trt"
    provider = "TensorrtExecutionProvider"
    precisions = ("fp32", "fp16")
    what = "onnxruntime-gpu with TensorRT"
    extra = "gpu,trt"

    def __init__(self, *, cache_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "ort-trt"

    def _providers(self) -> list[Any]:
        cache = str(self.cache_dir)
        trt_options = {
            "device_id": self.device_id,
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
        return [
            ("TensorrtExecutionProvider", trt_options),
            ("CUDAExecutionProvider", {"device_id": self.device_id}),
            "CPUExecutionProvider",
        ]

    def _fingerprint_impl(self) -> dict[str, Any]:
        fp = super()._fingerprint_impl()
        # The cache folder does not change latency; keep it out of the key.
        fp["providers"] = [p if isinstance(p, str) else p[0] for p in fp["providers"]]
        fp["trt_fp16"] = self.precision == "fp16"
        return fp

    def load(self, onnx_bytes: bytes) -> ort.InferenceSession:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return super().load(onnx_bytes)
