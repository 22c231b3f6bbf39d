"""Latency measurement: backends that time ONNX models, and the on-disk latency table.

    backend = get_backend("ort-cpu", threads=2)
    table = LatencyTable(None, backend)          # $ONNXMERGE_CACHE or ~/.cache/onnxmerge
    ms = table.measure_all(signatures)           # {ConvSignature: median ms}
    before, after = compare_models("in.onnx", "out.onnx", backend)

Backend modules import their heavy packages (torch, tensorrt) only when asked for.
"""

from onnxmerge.cache import default_cache_dir
from onnxmerge.latency.backend import (
    DEFAULT_BACKEND,
    Backend,
    MeasurePolicy,
    Timing,
    additivity_error,
    backend_names,
    compare_models,
    get_backend,
    measure_models,
    time_model,
)
from onnxmerge.latency.models import conv_model, random_feed
from onnxmerge.latency.table import LatencyTable, TableStats

__all__ = [
    "DEFAULT_BACKEND",
    "Backend",
    "LatencyTable",
    "MeasurePolicy",
    "TableStats",
    "Timing",
    "additivity_error",
    "backend_names",
    "compare_models",
    "conv_model",
    "default_cache_dir",
    "get_backend",
    "measure_models",
    "random_feed",
    "time_model",
]
