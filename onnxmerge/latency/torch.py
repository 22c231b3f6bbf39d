"""PyTorch backend: times ONNX graphs run with torch ops (onnxmerge.torch_graph), for users who
deploy with PyTorch, on the CPU (wall clock) or CUDA (CUDA events)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx

from onnxmerge.errors import OnnxMergeError
from onnxmerge.latency.backend import Backend, cpu_name, default_threads, require
from onnxmerge.torch_graph import TorchGraph


def _torch() -> Any:
    return require("torch", "torch", "PyTorch", "torch")


class TorchBackend(Backend):
    """PyTorch eager on CPU (wall clock) or CUDA (CUDA events)."""

    name = "torch"

    def __init__(self, *, device: str = "cpu", threads: int | None = None, **common: Any):
        super().__init__(**common)
        torch = _torch()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise OnnxMergeError(f"backend 'torch' on {device!r} needs a CUDA GPU and CUDA PyTorch")
        if device != "cpu" and not device.startswith("cuda"):
            raise OnnxMergeError(f"backend 'torch': device must be 'cpu' or 'cuda', not {device!r}")
        self.device = device
        self.threads = threads or default_threads()

    @property
    def cuda(self) -> bool:
        """Whether the backend times on a CUDA device."""
        return self.device.startswith("cuda")

    def _fingerprint_impl(self) -> dict[str, Any]:
        torch = _torch()
        fp: dict[str, Any] = {"torch": torch.__version__, "threads": self.threads}
        if self.cuda:
            fp["device"] = torch.cuda.get_device_name(self.device)
            fp["cudnn"] = torch.backends.cudnn.version()
            fp["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
            fp["tf32"] = bool(torch.backends.cudnn.allow_tf32)  # fp32 convs run as TF32 if set
        else:
            fp["device"] = cpu_name()
        return fp

    def _compute_dtype(self) -> Any:
        """dtype="float16" runs every model in half precision (an fp32 network too, as
        `module.half()` would), so a whole network is timed at the table's precision."""
        return _torch().float16 if self.dtype == "float16" else None

    def load(self, onnx_bytes: bytes) -> TorchGraph:
        """The graph as a TorchGraph on the backend's device (and precision)."""
        _torch().set_num_threads(self.threads)  # process-wide: recorded in the fingerprint
        return TorchGraph(onnx.load_from_string(onnx_bytes), self.device, self._compute_dtype())

    def prepare(self, session: TorchGraph, feed: dict[str, np.ndarray]) -> Any:
        """The inputs as torch tensors on the device (cast to the compute precision)."""
        torch = _torch()
        inputs = [torch.from_numpy(feed[n]).to(self.device) for n in session.inputs]
        if session.dtype is not None:
            inputs = [t.to(session.dtype) if t.is_floating_point() else t for t in inputs]
        return session, inputs

    def _run_once(self, prepared: Any) -> None:
        graph, inputs = prepared
        graph(*inputs)
        if self.cuda:
            _torch().cuda.synchronize(self.device)

    def _time_once(self, prepared: Any) -> float:
        if not self.cuda:
            start = time.perf_counter()
            self._run_once(prepared)
            return time.perf_counter() - start
        torch = _torch()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph, inputs = prepared
        start.record()
        graph(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def run(self, session: TorchGraph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        graph, inputs = self.prepare(session, feed)
        return [t.detach().cpu().numpy() for t in graph(*inputs)]
