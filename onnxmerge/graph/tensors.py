"""Small questions about onnx-graphsurgeon tensors that the matcher and the passes ask."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR


def const(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, or None for a variable (or a missing optional input)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape when every dimension is a known positive int, else None."""
    shape = getattr(tensor, "shape", None)
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    return tuple(shape)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor` is one of the graph's outputs (it must then survive any rewrite)."""
    return any(t is tensor for t in graph.outputs)
