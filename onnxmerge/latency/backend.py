"""The Backend contract and the one measurement loop every backend shares.

A backend knows how to load an ONNX model into its runtime and run it once; everything about
*timing* (warm-up, blocks, convergence, interleaving, percentiles) lives here, once, so all
backends report comparable numbers. Backends override ``_run_once`` (and ``_time_once`` when
the wall clock is the wrong clock, e.g. CUDA events).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxmerge.errors import OnnxMergeError
from onnxmerge.latency.models import DTYPES, MODEL_VERSION, random_feed


@dataclass(frozen=True)
class Timing:
    """Per-inference latency of one model: median and 10th/90th percentile over all repeats."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    boundary_ms: float = 0.0  # of the median: layout conversions at the inputs and outputs

    @classmethod
    def from_samples(cls, seconds: np.ndarray) -> Timing:
        """Median and 10th/90th percentiles (ms) of per-run times in seconds."""
        p10, med, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
        return cls(float(med), float(p10), float(p90), int(len(seconds)))


@dataclass(frozen=True)
class MeasurePolicy:
    """How long to measure: warm up, then blocks until the last block medians agree.

    A block is sized to last about ``block_s``; measuring stops once the relative spread
    (max - min) / median of the last ``window`` block medians is at most ``tolerance``,
    or once ``max_s`` seconds per model have been spent.
    """

    warmup_runs: int = 10
    warmup_s: float = 0.05
    block_s: float = 0.025
    min_block: int = 10
    max_block: int = 2000
    window: int = 3
    tolerance: float = 0.03
    max_s: float = 1.0


@dataclass
class _Track:
    """Measurement state of one model inside ``measure_many``."""

    prepared: Any
    block: int = 1
    samples: list[np.ndarray] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)

    def converged(self, policy: MeasurePolicy) -> bool:
        """The last `window` block medians agree within `tolerance`."""
        if len(self.medians) < policy.window:
            return False
        last = self.medians[-policy.window :]
        return (max(last) - min(last)) / float(np.median(last)) <= policy.tolerance


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # sched_getaffinity exists on Linux only
        return os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads when none are given: the CPUs available, at most 4 (stable timing)."""
    return max(1, min(4, available_cpus()))


def gpu_name(device_id: int = 0) -> str:
    """The GPU's marketing name via nvidia-smi (no CUDA Python bindings needed)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "unknown-gpu"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"
    return out.stdout.strip() or "unknown-gpu"


def require(module: str, backend: str, what: str, extra: str) -> Any:
    """Import ``module`` or fail with the one line that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxMergeError(
            f"backend {backend!r} needs {what}: pip install 'onnxmerge[{extra}]'"
        ) from None


class Backend(ABC):
    """A runtime that loads ONNX bytes and runs them; subclasses set ``name``."""

    name: ClassVar[str]
    # Precisions a builder can be asked for besides the dtype's own (fp32 / fp16).
    precisions: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        batch: int = 1,
        dtype: str = "float32",
        precision: str | None = None,
        policy: MeasurePolicy | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise OnnxMergeError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        if batch < 1:
            raise OnnxMergeError(f"batch must be at least 1, got {batch}")
        self.batch = batch
        self.dtype = dtype
        natural = "fp16" if dtype == "float16" else "fp32"
        if precision not in (None, natural, *self.precisions):
            raise OnnxMergeError(
                f"backend {self.name!r} runs {dtype} as {natural}, not {precision!r}"
                + (f"; choose one of {', '.join(self.precisions)}" if self.precisions else "")
            )
        self.precision = precision or natural
        self.policy = policy or MeasurePolicy()

    # -- identity -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a measured latency; the cache key hashes it."""
        return {
            "backend": self.name,
            "batch": self.batch,
            "dtype": self.dtype,
            "precision": self.precision,
            "model_version": MODEL_VERSION,
            "machine": platform.machine(),
            **self._fingerprint_impl(),
        }

    def fingerprint_hash(self) -> str:
        """A short hash of the fingerprint (the latency cache key)."""
        text = json.dumps(self.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @abstractmethod
    def _fingerprint_impl(self) -> dict[str, Any]:
        """Library versions, device name, threads and runtime settings."""

    # -- running --------------------------------------------------------------------------
    @abstractmethod
    def load(self, onnx_bytes: bytes) -> Any:
        """Build the runtime's session (engine, module, ...) for a serialized model."""

    def prepare(self, session: Any, feed: dict[str, np.ndarray]) -> Any:
        """Move the feed where the runtime wants it (device memory), once, before timing."""
        return session, feed

    def unprepare(self, prepared: Any) -> None:
        """Free what ``prepare`` allocated (device buffers); called after timing."""
        return None

    def release(self, session: Any) -> None:
        """Free a loaded session (engines hold GPU memory; a table loads hundreds)."""
        return None

    @abstractmethod
    def _run_once(self, prepared: Any) -> None:
        """One synchronous inference; must return only when the result is ready."""

    def _time_once(self, prepared: Any) -> float:
        """Seconds one inference takes; wall clock by default."""
        start = time.perf_counter()
        self._run_once(prepared)
        return time.perf_counter() - start

    def run(self, session: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs as numpy arrays (for checks, not timing)."""
        raise NotImplementedError(f"backend {self.name!r} does not return outputs")

    def boundary_ms(self, onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> float:
        """Of a model's per-run time, what the runtime spends converting its inputs and
        outputs between the graph's layout and its own (ms): a conv timed alone pays it, the
        same conv between convs in a network does not. 0 where the runtime keeps the layout
        (the default)."""
        return 0.0

    def other_fraction(self, onnx_bytes: bytes, feed: dict[str, np.ndarray]) -> float | None:
        """The fraction of a network's run time spent outside its convs and their activations
        (pools, gates, heads, layout changes), read from the runtime's profiler; None where
        the runtime has none (the default). The rest, the network's convs as they run in it,
        tells how far the table's convs timed alone are off."""
        return None

    # -- measuring ------------------------------------------------------------------------
    def measure(self, session: Any, feed: dict[str, np.ndarray]) -> Timing:
        """Latency of one loaded model (see MeasurePolicy for when it stops)."""
        return self.measure_many([(session, feed)])[0]

    def measure_many(self, items: Sequence[tuple[Any, dict[str, np.ndarray]]]) -> list[Timing]:
        """Latencies of several models, one block each in turn, so slow drift hits all alike.

        The round order alternates (A B, then B A) to cancel linear drift too, and every
        model is measured every round until all have converged, so their samples pair up.
        """
        policy = self.policy
        tracks: list[_Track] = []
        try:
            for session, feed in items:
                tracks.append(_Track(self.prepare(session, feed)))
            for track in tracks:
                track.block = self._warm_up(track.prepared)
            deadline = time.perf_counter() + policy.max_s * len(tracks)
            rounds = 0
            while True:
                for track in tracks if rounds % 2 == 0 else tracks[::-1]:
                    self._block(track)
                rounds += 1
                if all(t.converged(policy) for t in tracks) or time.perf_counter() > deadline:
                    break
        finally:
            for track in tracks:
                self.unprepare(track.prepared)
        return [Timing.from_samples(np.concatenate(t.samples)) for t in tracks]

    def _warm_up(self, prepared: Any) -> int:
        """Run until warm; return the block size that lasts about ``policy.block_s``."""
        policy = self.policy
        times = []
        start = time.perf_counter()
        while len(times) < policy.warmup_runs or time.perf_counter() - start < policy.warmup_s:
            times.append(self._time_once(prepared))
            if time.perf_counter() - start > policy.max_s:
                break
        per_run = max(float(np.median(times[len(times) // 2 :])), 1e-7)
        return int(
            min(max(math.ceil(policy.block_s / per_run), policy.min_block), policy.max_block)
        )

    def _block(self, track: _Track) -> None:
        samples = np.fromiter(
            (self._time_once(track.prepared) for _ in range(track.block)), float, track.block
        )
        track.samples.append(samples)
        track.medians.append(float(np.median(samples)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint()})"


# name -> (module, class); modules are imported only when their backend is asked for.
_REGISTRY: dict[str, tuple[str, str]] = {
    "ort-cpu": ("onnxmerge.latency.ort", "OrtCpuBackend"),
    "ort-cuda": ("onnxmerge.latency.ort", "OrtCudaBackend"),
    "ort-trt": ("onnxmerge.latency.ort", "OrtTrtBackend"),
    "trt": ("onnxmerge.latency.trt", "TrtBackend"),
    "torch": ("onnxmerge.latency.torch", "TorchBackend"),
}
DEFAULT_BACKEND = "ort-cpu"


def backend_names() -> list[str]:
    """Every registered backend name, the default first."""
    return list(_REGISTRY)


def get_backend(name: str = DEFAULT_BACKEND, **options: Any) -> Backend:
    """The backend called ``name``, configured with ``options`` (batch, dtype, threads, ...)."""
    if name not in _REGISTRY:
        raise OnnxMergeError(f"unknown backend {name!r}; choose one of {', '.join(_REGISTRY)}")
    module, cls_name = _REGISTRY[name]
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(**options)
    except TypeError as e:
        raise OnnxMergeError(f"backend {name!r}: bad option ({e})") from None


# -- whole models ---------------------------------------------------------------------------
ModelLike = bytes | str | os.PathLike | onnx.ModelProto


def model_bytes(model: ModelLike) -> bytes:
    """Serialized model from bytes, a path (external data inlined) or a ModelProto."""
    if isinstance(model, bytes):
        return model
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    try:
        return onnx.load(os.fspath(model)).SerializeToString()
    except (OSError, DecodeError) as e:
        raise OnnxMergeError(f"cannot read model {os.fspath(model)!r}: {e}") from None


def measure_models(
    models: Sequence[ModelLike],
    backend: Backend,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[Timing]:
    """End-to-end latencies of whole models on random inputs of their static input shapes,
    measured interleaved; sessions are released afterwards."""
    loaded: list[tuple[Any, dict[str, np.ndarray]]] = []
    try:
        for model in models:
            data = model_bytes(model)
            feed = random_feed(onnx.load_from_string(data), shapes=shapes)
            loaded.append((backend.load(data), feed))
        return backend.measure_many(loaded)
    finally:
        for session, _ in loaded:
            backend.release(session)


def time_model(
    model: ModelLike, backend: Backend, shapes: dict[str, tuple[int, ...]] | None = None
) -> Timing:
    """End-to-end latency of one whole model."""
    return measure_models([model], backend, shapes)[0]


def compare_models(
    a: ModelLike,
    b: ModelLike,
    backend: Backend,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[Timing, Timing]:
    """Latencies of two models measured interleaved (e.g. input vs compressed output)."""
    ta, tb = measure_models([a, b], backend, shapes)
    return ta, tb


def additivity_error(predicted_ms: float | Iterable[float], measured_ms: float) -> float:
    """Relative error (predicted - measured) / measured of a sum of table latencies.

    Positive when the table over-predicts; ``predicted_ms`` may be the parts to sum.
    """
    total = predicted_ms if isinstance(predicted_ms, int | float) else math.fsum(predicted_ms)
    if not measured_ms > 0:
        raise ValueError(f"measured latency must be positive, got {measured_ms}")
    return (float(total) - measured_ms) / measured_ms
