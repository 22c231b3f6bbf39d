"""Normalize a validated model into the clean form the matcher reads.

Constant and Identity weight plumbing (legacy torch exports, Paddle) folds into initializers;
Identity nodes between ops are bypassed; BatchNormalization and per-channel affine ops fold
into the Conv before them; zero Pads fold into Conv pads; shapes are inferred so every Conv
knows its input H x W (where ONNX shape inference cannot follow the shape arithmetic, from one
ONNX Runtime run at static input shapes), and every Conv is checked against its input
(graph.load.check_convs) before anything is folded into it.

Dynamic dimensions stay dynamic in the graph: shape arithmetic is folded only where the
model's own declared shapes make it constant (a Reshape to "batch x -1" keeps reading the
batch at run time), and the static shapes of `--input-shape` are used for shape inference
only, which is what the matcher reads (graph.export restores the declared interface).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph.load import check_convs
from onnxmerge.graph.tensors import static_shape
from onnxmerge.passes import bypass_identities, fold_affine_into_conv, fold_pad_into_conv
from onnxmerge.passes.lift_1d import lift_conv1d, sink_squeezes


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every dynamic input dimension a named symbol (Paddle writes -1 or 0)."""
    if all(
        d.HasField("dim_param") or d.dim_value > 0
        for v in model.graph.input
        for d in v.type.tensor_type.shape.dim
    ):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for v in out.graph.input:
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if not d.HasField("dim_param") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = f"{v.name}_dim{i}"
    return out


def infer_shapes(graph: gs.Graph, input_shapes: dict | None = None) -> gs.Graph:
    """Re-run ONNX shape inference (with data propagation) and re-import.

    `input_shapes` ({input name: static shape}) fix dynamic inputs for the inference only.
    """
    model = gs.export_onnx(graph, do_type_check=False)
    for value in model.graph.input:
        shape = (input_shapes or {}).get(value.name)
        if shape is not None:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
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


def normalize(
    model: onnx.ModelProto, input_shapes: dict | None = None, lift: bool = False
) -> gs.Graph:
    """Fold constants, Identity, BN/affine and Pads; return a toposorted graph whose tensors
    carry static shapes (dynamic inputs fixed by `input_shapes` for inference). `lift`: 1-D
    convs become 2-D ones of height 1 first, and runs of them join (passes.lift_1d: what
    depth compression merges)."""
    graph = infer_shapes(to_graph(_symbolic(model)))
    # Shape arithmetic (Shape -> Gather -> Div -> Slice, as legacy torch exports write
    # chunk / split) folds only once the shapes it reads are known.
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True, error_ok=True)
    bypass_identities(graph)
    graph.cleanup(remove_unused_graph_inputs=False)
    if len(graph.nodes) != before or input_shapes:
        graph = infer_shapes(graph, input_shapes)
    check_convs(graph)
    if lift and lift_conv1d(graph) + sink_squeezes(graph):
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    fold_pad_into_conv(graph)
    fold_affine_into_conv(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    name_nodes(graph)
    graph = infer_shapes(graph, input_shapes)
    shapes_from_runtime(graph)
    return graph


def shapes_from_runtime(graph: gs.Graph) -> None:
    """Give the tensors ONNX shape inference left without a static shape the shapes they
    take in one ONNX Runtime run on random inputs (in place).

    Data propagation does not follow every piece of shape arithmetic: a legacy torch export
    computes a channel shuffle's Reshape target through Shape -> Gather -> Div -> Cast, and
    every tensor after it stays unknown, its convs outside every chain. Only with static
    inputs (declared, or fixed by --input-shape): a dynamic input leaves the graph as it is.
    A model that does not run is left as it is too (check_user_model reports it).
    """
    if any(static_shape(t) is None for t in graph.inputs):
        return
    missing = [
        t
        for t in graph.tensors().values()
        if isinstance(t, gs.Variable) and static_shape(t) is None and t not in graph.inputs
    ]
    if not missing:
        return
    from onnxmerge.runtime import random_inputs, run

    model = gs.export_onnx(graph, do_type_check=False)
    try:
        got = run(model, random_inputs(model), [t.name for t in missing])
    except Exception:  # onnxruntime's errors derive from Exception only
        return
    for t in missing:
        if t.name in got:
            t.shape = list(got[t.name].shape)


def name_nodes(graph: gs.Graph) -> None:
    """Give every unnamed node a unique name (its op and position): calibration and the plan
    find nodes by name, and ONNX leaves names optional (ONNX Runtime only refuses repeats)."""
    taken = {n.name for n in graph.nodes}
    for i, node in enumerate(graph.nodes):
        if node.name:
            continue
        name, k = f"{node.op}_{i}", 0
        while name in taken:
            k += 1
            name = f"{node.op}_{i}_{k}"
        node.name = name
        taken.add(name)
