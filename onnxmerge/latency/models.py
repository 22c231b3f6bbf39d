"""One-conv ONNX models built from a ConvSignature, and random feeds for any static model.

The latency table times each candidate as the subgraph it becomes in the output network:
the Conv, the residual Add it keeps (if any) and its activation, spelled the way exporters
spell them (activations.FORMS), so the runtime applies the same fusions it applies to the
deployed network.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.activations import spell
from onnxmerge.errors import OnnxMergeError
from onnxmerge.signature import ConvSignature

# Bump when the built models or what a timing means change, so old cached latencies stop
# matching (2: rows hold their boundary conversions, networks are cached as ratios to tables
# without them).
MODEL_VERSION = 2

DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def _np_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise OnnxMergeError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return np.dtype(dtype)


class _Builder:
    """Collects nodes and initializers (the activations.Emitter protocol); names are short
    and unique."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value: np.ndarray | float, name: str | None = None) -> str:
        """Add a constant in the model's dtype; return its name."""
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        """Append a node whose output (and name) is `output`."""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        """activations.Emitter: a node with a generated output name."""
        return self.node(op_type, inputs, f"{op_type.lower()}{len(self.nodes)}", **attrs)


def conv_model(
    sig: ConvSignature, batch: int = 1, dtype: str = "float32", opset: int = 17, seed: int = 0
) -> onnx.ModelProto:
    """The one-conv model of ``sig`` (a Conv, or a ConvTranspose): inputs ``x`` (and ``skip``
    when residual), output ``y`` (N x C x H x W, or N x C x L for a 1-D signature).

    Weights are random but seeded, so every run times the very same model.
    """
    np_dtype = _np_dtype(dtype)
    if sig.in_channels % sig.groups or sig.out_channels % sig.groups:
        raise OnnxMergeError(f"signature {sig.key()}: channels are not divisible by groups")
    out_h, out_w = sig.out_hw
    if out_h < 1 or out_w < 1:
        raise OnnxMergeError(f"signature {sig.key()}: the conv output would be empty")
    rng = np.random.default_rng(seed)
    kh, kw = sig.kernel
    fan_in = sig.in_channels // sig.groups * kh * kw
    rows, cols = sig.out_channels, sig.in_channels // sig.groups
    if sig.transpose:  # ConvTranspose: C_in x C_out/groups x kh x kw
        rows, cols = sig.in_channels, sig.out_channels // sig.groups
    weight = rng.standard_normal((rows, cols, kh, kw))
    weight = weight if sig.rank == 2 else weight[:, :, 0]
    b = _Builder(np_dtype)
    conv_inputs = [
        "x",
        b.const(weight / math.sqrt(fan_in), "conv_w"),
        b.const(rng.standard_normal(sig.out_channels) * 0.1, "conv_b"),
    ]
    axes = slice(2 - sig.rank, 2)  # a 1-D conv drops the height of its 2-D form
    t, left, bottom, right = sig.pads
    extra = {"output_padding": list(sig.output_padding)[axes]} if sig.transpose else {}
    y = b.node(
        "ConvTranspose" if sig.transpose else "Conv",
        conv_inputs,
        "conv",
        kernel_shape=list(sig.kernel)[axes],
        strides=list(sig.stride)[axes],
        dilations=list(sig.dilation)[axes],
        pads=[t, left, bottom, right] if sig.rank == 2 else [left, right],
        group=sig.groups,
        **extra,
    )
    elem = DTYPES[dtype]
    out_shape = [batch, sig.out_channels, *[out_h, out_w][axes]]
    in_shape = [batch, sig.in_channels, *list(sig.in_hw)[axes]]
    inputs = [helper.make_tensor_value_info("x", elem, in_shape)]
    if sig.residual:
        inputs.append(helper.make_tensor_value_info("skip", elem, out_shape))
        y = b.node("Add", [y, "skip"], "residual")
    if sig.activation is not None:
        y = spell(b, sig.activation, y, sig.out_channels, opset)
    b.nodes[-1].output[0] = "y"  # the last node produces the graph output
    graph = helper.make_graph(
        b.nodes,
        "onnxmerge_conv",
        inputs,
        [helper.make_tensor_value_info("y", elem, out_shape)],
        initializer=b.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="onnxmerge",
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    return model


def _static_shape(value: onnx.ValueInfoProto, shapes: dict[str, tuple[int, ...]]) -> tuple:
    if value.name in shapes:
        return tuple(shapes[value.name])
    dims = []
    for d in value.type.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            name = d.dim_param or "?"
            raise OnnxMergeError(
                f"input {value.name!r} has a dynamic dimension {name!r}; give a static shape"
            )
        dims.append(d.dim_value)
    return tuple(dims)


def random_feed(
    model: onnx.ModelProto, seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """Seeded random arrays for every real graph input (initializers excluded).

    ``shapes`` overrides the declared shape of named inputs (for dynamic dimensions).
    """
    shapes = shapes or {}
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        elem = value.type.tensor_type.elem_type
        if not value.type.HasField("tensor_type") or elem == TensorProto.UNDEFINED:
            raise OnnxMergeError(f"input {value.name!r} is not a tensor with a known type")
        np_dtype = helper.tensor_dtype_to_np_dtype(elem)
        shape = _static_shape(value, shapes)
        if np.issubdtype(np_dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(np_dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype=np_dtype)
    return feed
