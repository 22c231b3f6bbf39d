"""Export a rewritten graphsurgeon graph as a model shaped like the user's.

The written model keeps the input model's opsets, IR version and metadata, and its interface:
graph inputs and outputs are declared exactly as the user's file declared them (dynamic
dimensions stay dynamic; the fixed `--input-shape` served analysis and timing only).
Intermediate shapes are dropped: rewrites change them (the fine-tune form's maps are larger
than nominal), and stale value_info would contradict ONNX Runtime's own inference.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def export(
    graph: gs.Graph, like: onnx.ModelProto, interface: onnx.ModelProto | None = None
) -> onnx.ModelProto:
    """`graph` as a ModelProto with `like`'s opsets, IR version and metadata.

    `interface` (default `like`): the model whose graph input and output declarations the
    result takes over, by name.
    """
    keep = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in keep:
            t.shape = None
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.producer_name = "onnxmerge"
    for prop in like.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    declared = interface if interface is not None else like
    for mine, theirs in ((model.graph.input, declared.graph.input),
                         (model.graph.output, declared.graph.output)):  # fmt: skip
        by_name = {v.name: v for v in theirs}
        for value in mine:
            if value.name in by_name:
                value.CopyFrom(by_name[value.name])
    return model
