"""Load, validate, normalize and save ONNX models (the only place that touches files)."""

from onnxmerge.graph.load import batch_of_one, load_model, parse_input_shapes, with_input_shapes
from onnxmerge.graph.normalize import normalize
from onnxmerge.graph.save import save_model

__all__ = [
    "batch_of_one",
    "load_model",
    "normalize",
    "parse_input_shapes",
    "save_model",
    "with_input_shapes",
]
