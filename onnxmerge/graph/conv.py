"""The Conv adapter: read an ONNX Conv into numbers once, and write one back.

Every place that needs a Conv's geometry or weights goes through here: the matcher
(`conv_spec`), the passes and the rewrite (`read_linear`, `conv_node`), calibration and
importance on NodeProto graphs (`read_linear_proto`, `conv_proto`). Attribute decoding
(bytes vs str, defaults), `auto_pad` resolution and output sizes (onnxmerge.geometry) exist
once.

`auto_pad` SAME_* whose padding would be negative (a stride larger than the kernel's extent
leaves input pixels unread) is not resolved: ONNX Runtime and the ONNX reference disagree on
it, so such a Conv stays as it is (`conv_spec` returns None and says why in `why_not_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmerge.chain import ConvSpec
from onnxmerge.compose import LinearConv
from onnxmerge.geometry import auto_pads, pair, same_pads_needed
from onnxmerge.graph.names import Names
from onnxmerge.graph.tensors import const, static_shape


def attr_str(value: Any) -> Any:
    """An attribute value with bytes decoded (graphsurgeon keeps some strings as bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def proto_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A NodeProto's attributes as a plain dict (strings decoded)."""
    return {a.name: attr_str(onnx.helper.get_attribute_value(a)) for a in node.attribute}


def auto_pad_of(attrs: Mapping[str, Any]) -> str:
    """The `auto_pad` attribute, NOTSET when absent or empty."""
    value = attr_str(attrs.get("auto_pad", "NOTSET")) or "NOTSET"
    return value


def geometry(
    attrs: Mapping[str, Any], kernel: tuple[int, ...], in_hw: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], int] | None:
    """(stride, dilation, pads, group) of a 2-D Conv, `auto_pad` resolved against `in_hw`.

    None when auto_pad needs the input size and `in_hw` is None, or when SAME_* would need
    negative padding (runtimes disagree there).
    """
    stride = pair(attrs.get("strides", (1, 1)))
    dilation = pair(attrs.get("dilations", (1, 1)))
    group = int(attrs.get("group", 1))
    mode = auto_pad_of(attrs)
    if mode == "NOTSET":
        p = [int(x) for x in attrs.get("pads", (0, 0, 0, 0))]
        return stride, dilation, (p[0], p[1], p[2], p[3]), group
    if mode != "VALID":
        if in_hw is None:
            return None
        for size, k, s, d in zip(in_hw, kernel, stride, dilation, strict=True):
            if same_pads_needed(size, k, s, d) < 0:
                return None
    p = auto_pads(mode, in_hw or (0, 0), kernel, stride, dilation)
    return stride, dilation, (p[0], p[1], p[2], p[3]), group


def why_not_spec(node: gs.Node) -> str:
    """Why `conv_spec(node)` is None ('' when it is not)."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return "not a Conv with a weight"
    w = const(node.inputs[1])
    if w is None:
        return "weights are not constant"
    if w.ndim != 4:
        return f"{w.ndim - 2}-D convolution"
    if not _constant_bias(node):
        return "bias is not constant"
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return "input shape unknown"
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", w.shape[2:]))
    if geometry(node.attrs, kernel, (shape[2], shape[3])) is None:
        return "auto_pad SAME with negative padding (runtimes disagree on it)"
    return ""


def conv_spec(node: gs.Node) -> ConvSpec | None:
    """The ConvSpec of a 2-D Conv with constant weights and a static input, else None."""
    if why_not_spec(node):
        return None
    w = const(node.inputs[1])
    shape = static_shape(node.inputs[0])
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", w.shape[2:]))
    in_hw = (shape[2], shape[3])
    stride, dilation, pads, group = geometry(node.attrs, kernel, in_hw)
    return ConvSpec(
        name=node.name,
        in_channels=shape[1],
        out_channels=int(w.shape[0]),
        kernel=(kernel[0], kernel[1]),
        stride=stride,
        dilation=dilation,
        pads=pads,
        groups=group,
        in_hw=in_hw,
    )


def _constant_bias(node: gs.Node) -> bool:
    """No bias, or a constant one."""
    return not (len(node.inputs) > 2 and node.inputs[2].name and const(node.inputs[2]) is None)


def lift_1d(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A 1-D Conv's attributes for the 2-D conv it equals with a height of 1."""
    lifted = {"strides": [1, *attrs.get("strides", [1])], "group": attrs.get("group", 1),
              "dilations": [1, *attrs.get("dilations", [1])],
              "auto_pad": attrs.get("auto_pad", "NOTSET")}  # fmt: skip
    if "pads" in attrs:
        lifted["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    return lifted


def conv1d_spec(node: gs.Node) -> ConvSpec | None:
    """The ConvSpec of a 1-D Conv (constant weights and bias, static N x C x L input) in the
    2-D form it equals with a height of 1 (kernel 1 x k, no vertical padding; ConvSignature
    rank 1), else None. Width pruning's latency table, OBS and refit read 1-D convs so; depth
    merges only 2-D ones (conv_spec)."""
    if node.op != "Conv" or len(node.inputs) < 2 or (w := const(node.inputs[1])) is None:
        return None
    shape = static_shape(node.inputs[0])
    if w.ndim != 3 or shape is None or len(shape) != 3 or not _constant_bias(node):
        return None
    kernel = (1, int(node.attrs.get("kernel_shape", w.shape[2:])[0]))
    found = geometry(lift_1d(node.attrs), kernel, (1, shape[2]))
    if found is None:
        return None
    stride, dilation, pads, group = found
    return ConvSpec(node.name, shape[1], int(w.shape[0]), kernel, stride, dilation, pads, group,
                    (1, shape[2]))  # fmt: skip


def transpose_spec(node: gs.Node) -> tuple[ConvSpec, tuple[int, int]] | None:
    """(ConvSpec, output_padding) of a 2-D ConvTranspose with constant weights (C_in x
    C_out/group x k x k), a static input and explicit pads (no `output_shape`, no auto_pad),
    in Conv's terms (in_channels its input's, in_hw its input's size); else None."""
    if node.op != "ConvTranspose" or len(node.inputs) < 2 or (w := const(node.inputs[1])) is None:
        return None
    shape, a = static_shape(node.inputs[0]), node.attrs
    if w.ndim != 4 or shape is None or len(shape) != 4 or "output_shape" in a:
        return None
    if auto_pad_of(a) != "NOTSET" or not _constant_bias(node):
        return None
    kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
    stride, dilation, pads, group = geometry(a, kernel, (shape[2], shape[3]))
    spec = ConvSpec(node.name, shape[1], int(w.shape[1]) * group, (kernel[0], kernel[1]),
                    stride, dilation, pads, group, (shape[2], shape[3]))  # fmt: skip
    return spec, pair(a.get("output_padding", (0, 0)))


def conv_weight(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (zeros when absent) of a Conv with constant inputs."""
    w = const(node.inputs[1])
    b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if b is None:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    return w, b


def read_linear(node: gs.Node) -> LinearConv:
    """The float64 LinearConv of a Conv node that `conv_spec` accepts, or of a 1-D one that
    `conv1d_spec` does, in its height-1 form (weight O x I x 1 x k)."""
    spec = conv_spec(node) or conv1d_spec(node)
    if spec is None:
        raise ValueError(f"Conv {node.name!r}: {why_not_spec(node)}")
    w, b = conv_weight(node)
    w = w[:, :, None] if w.ndim == 3 else w
    return LinearConv(w, b, spec.stride, spec.pads, spec.dilation, spec.groups)


def read_linear_proto(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> LinearConv:
    """The LinearConv of a Conv NodeProto whose weight and bias are initializers (explicit pads);
    a 1-D Conv as the 2-D conv it equals with a height of 1 (weight O x I x 1 x k)."""
    w = onnx.numpy_helper.to_array(inits[node.input[1]])
    b = onnx.numpy_helper.to_array(inits[node.input[2]])
    attrs = proto_attrs(node)
    if w.ndim == 3:
        w, attrs = w[:, :, None], lift_1d(attrs)
    stride, dilation, pads, group = geometry(attrs, tuple(w.shape[2:]), None)
    return LinearConv(w, b, stride, pads, dilation, group)


def read_transpose(node: gs.Node) -> tuple[LinearConv, tuple[int, int]] | None:
    """read_transpose_proto of a graph node (constant weight and bias) that `transpose_spec`
    accepts; else None."""
    if transpose_spec(node) is None:
        return None
    w = const(node.inputs[1])
    b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    return _transpose_as_conv(w, np.zeros(w.shape[1], w.dtype) if b is None else b, node.attrs)


def read_transpose_proto(
    node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]
) -> tuple[LinearConv, tuple[int, int]] | None:
    """(the stride-1 LinearConv a 2-D ConvTranspose NodeProto equals on its zero-inserted
    input, its stride) (conv_transpose.as_conv) for one with initializer weight and bias, one
    group, dilation 1 and explicit pads within its kernel; else None."""
    w = onnx.numpy_helper.to_array(inits[node.input[1]])
    b = onnx.numpy_helper.to_array(inits[node.input[2]])
    return _transpose_as_conv(w, b, proto_attrs(node))


def _transpose_as_conv(
    w: np.ndarray, b: np.ndarray, attrs: Mapping[str, Any]
) -> tuple[LinearConv, tuple[int, int]] | None:
    """The checks and conversion both readers share: a 4-D weight, no `output_shape`, explicit
    pads, one group, dilation 1, pads within the kernel (conv_transpose.as_conv)."""
    from onnxmerge.conv_transpose import as_conv

    if w.ndim != 4 or "output_shape" in attrs or auto_pad_of(attrs) != "NOTSET":
        return None
    stride, dilation, pads, group = geometry(attrs, tuple(w.shape[2:]), None)
    if group != 1 or dilation != (1, 1):
        return None
    lin = as_conv(w, b, pads, pair(attrs.get("output_padding", (0, 0))))
    return None if lin is None else (lin, stride)


def set_weights(conv: gs.Node, lin: LinearConv, names: Names, base: str) -> None:
    """Give `conv` new weight and bias constants from `lin` (fresh names `{base}_W`,
    `{base}_B`, cast to the conv's weight dtype); its attributes are left as they are."""
    dtype = np.asarray(conv.inputs[1].values).dtype
    name = names.fresh(base, "_W", "_B")
    conv.inputs[1] = gs.Constant(f"{name}_W", lin.weight.astype(dtype))
    bias = gs.Constant(f"{name}_B", lin.bias.astype(dtype))
    if len(conv.inputs) > 2:
        conv.inputs[2] = bias
    else:
        conv.inputs.append(bias)


def conv_attributes(lin: LinearConv) -> dict[str, Any]:
    """The ONNX Conv attributes of `lin` (explicit pads, no auto_pad)."""
    return {
        "kernel_shape": [int(k) for k in lin.kernel],
        "strides": [int(x) for x in lin.stride],
        "pads": [int(x) for x in lin.pads],
        "dilations": [int(x) for x in lin.dilation],
        "group": int(lin.groups),
    }


def conv_node(name: str, x: gs.Tensor, y: gs.Tensor, lin: LinearConv, dtype: np.dtype) -> gs.Node:
    """A graphsurgeon Conv `y = lin(x)` with weights `{name}_W`, `{name}_B` cast to `dtype`.

    The caller makes `name` unique (graph.names); `y` must have no other producer.
    """
    return gs.Node(
        "Conv",
        name=name,
        attrs=conv_attributes(lin),
        inputs=[
            x,
            gs.Constant(f"{name}_W", lin.weight.astype(dtype)),
            gs.Constant(f"{name}_B", lin.bias.astype(dtype)),
        ],
        outputs=[y],
    )


def conv_proto(
    name: str, x: str, y: str, lin: LinearConv, dtype: np.dtype
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """A Conv NodeProto `y = lin(x)` and its two initializers `{name}_W`, `{name}_B`."""
    inits = [
        onnx.numpy_helper.from_array(lin.weight.astype(dtype), f"{name}_W"),
        onnx.numpy_helper.from_array(lin.bias.astype(dtype), f"{name}_B"),
    ]
    node = onnx.helper.make_node(
        "Conv", [x, f"{name}_W", f"{name}_B"], [y], name=name, **conv_attributes(lin)
    )
    return node, inits
