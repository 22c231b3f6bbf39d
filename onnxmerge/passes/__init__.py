"""Graph passes over onnx-graphsurgeon graphs, one per module.

Each pass rewires tensors and leaves dead nodes behind; callers run `graph.cleanup()` once.
Each returns the number of rewrites it made.
"""

from onnxmerge.passes.bypass_identity import bypass_identities
from onnxmerge.passes.fold_affine import fold_affine_into_conv
from onnxmerge.passes.fold_pad import fold_pad_into_conv

__all__ = ["bypass_identities", "fold_affine_into_conv", "fold_pad_into_conv"]
