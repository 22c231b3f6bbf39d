"""Normalize a validated model into the clean form the matcher reads.

Constant and Identity weight plumbing (legacy torch exports, Paddle) folds into initializers;
BatchNormalization and per-channel affine ops fold into the Conv before them; zero Pads fold
into Conv pads; shapes are inferred so every Conv knows its input H x W, and every Conv is
checked against its input (graph.load.check_convs) before anything is folded into it.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph.load import check_convs
from onnxmerge.passes import fold_affine_into_conv, fold_pad_into_conv


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Re-run ONNX shape inference (with data propagation) and re-import."""
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise OnnxMergeError(f"shape inference failed on the model ({exc})") from None
    return gs.import_onnx(model)


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into onnx-graphsurgeon with its weights folded into constants."""
    graph = gs.import_onnx(model)
    graph.fold_constants(fold_shapes=True, error_ok=True)
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph


def normalize(model: onnx.ModelProto) -> gs.Graph:
    """Fold constants, BN/affine and Pads; return a toposorted graph with inferred shapes."""
    graph = infer_shapes(to_graph(model))
    # Shape arithmetic (Shape -> Gather -> Div -> Slice, as legacy torch exports write
    # chunk / split) folds only once the shapes it reads are known.
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True, error_ok=True)
    graph.cleanup(remove_unused_graph_inputs=False)
    if len(graph.nodes) != before:
        graph = infer_shapes(graph)
    check_convs(graph)
    fold_pad_into_conv(graph)
    fold_affine_into_conv(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(graph)
