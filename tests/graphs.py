"""Small onnx.helper graph builders and ONNX Runtime helpers for the hardening tests.

Every builder returns an onnx.ModelProto (opset 17 unless said, IR 8) that passes the ONNX
checker and loads in ONNX Runtime, so the tests judge onnxmerge's handling of it and nothing
else.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


class G:
    """Append nodes / initializers with generated names; `model()` closes the graph."""

    def __init__(self, seed: int = 0, opset: int = 17, names: bool = True):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.opset = opset
        self.names = names  # False: nodes get no name (as some exporters write them)
        self._n = 0

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, name: str, shape, elem=F) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, out: str | None = None,
             **attrs) -> str:  # fmt: skip
        out = out or self.fresh(op.lower() + "_out")
        node_name = (name or self.fresh(op.lower())) if self.names else ""
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, *, name: str | None = None,
             w_name: str | None = None, bias: bool = True, group: int = 1, out: str | None = None,
             scale: float | None = None, **attrs) -> str:  # fmt: skip
        fan_in = (c_in // group) * k * k
        s = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        w = self.const(self.rng.standard_normal((c_out, c_in // group, k, k)) * s, w_name)
        ins = [x, w]
        if bias:
            ins.append(self.const(self.rng.standard_normal(c_out) * 0.1))
        if group != 1:
            attrs["group"] = group
        return self.node("Conv", ins, name=name, out=out, kernel_shape=[k, k], **attrs)

    def conv_transpose(self, x: str, c_in: int, c_out: int, group: int = 1) -> str:
        """ConvTranspose 2x2, stride 2 (weight (c_in, c_out / group, 2, 2)), with a bias."""
        w = self.const(self.rng.standard_normal((c_in, c_out // group, 2, 2)) * 0.5)
        bias = self.const(self.rng.standard_normal(c_out) * 0.1)
        attrs = {"group": group} if group > 1 else {}
        return self.node("ConvTranspose", [x, w, bias], kernel_shape=[2, 2], strides=[2, 2],
                         **attrs)  # fmt: skip

    def model(self, outputs: list[tuple[str, list | None]], ir_version: int = 8) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(n, F, s) for n, s in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = ir_version
        if any(s is None for _, s in outputs):
            model = infer_output_shapes(model)
        return model


def resnext(width: int, group: int, seed: int = 0, size: int = 8) -> onnx.ModelProto:
    """A ResNeXt block between two dense convs: 3x3 3 -> 8, then 1x1 8 -> width, grouped 3x3
    (`group` groups), 1x1 width -> 8, residual Add, Relu, 3x3 8 -> 4 ("y")."""
    b = G(seed=seed)
    x = b.node("Relu", [b.conv(b.input("x", [1, 3, size, size]), 3, 8, pads=[1] * 4)])
    h = b.node("Relu", [b.conv(x, 8, width, 1)])
    h = b.node("Relu", [b.conv(h, width, width, group=group, pads=[1] * 4)])
    y = b.node("Relu", [b.node("Add", [b.conv(h, width, 8, 1), x])])
    return b.model([(b.conv(y, 8, 4, pads=[1] * 4, out="y"), None)])


def unet(c: int = 8, seed: int = 0, size: int = 8) -> onnx.ModelProto:
    """A UNet step: conv 3 -> c (the skip), strided conv c -> 2c, ConvTranspose 2c -> c,
    Concat with the skip, conv 2c -> 4 ("y"); Relu after each but the last."""
    b = G(seed=seed)
    skip = b.node("Relu", [b.conv(b.input("x", [1, 3, size, size]), 3, c, pads=[1] * 4)])
    down = b.node("Relu", [b.conv(skip, c, 2 * c, pads=[1] * 4, strides=[2, 2])])
    up = b.node("Relu", [b.conv_transpose(down, 2 * c, c)])
    cat = b.node("Concat", [up, skip], axis=1)
    return b.model([(b.conv(cat, 2 * c, 4, pads=[1] * 4, out="y"), None)])


def conv1d(length: int = 16, seed: int = 0) -> onnx.ModelProto:
    """1-D convs (weights (O, I / group, k)): Conv 3 -> 8 "c1", Relu "r", then a grouped
    Conv1d 8 -> 4 (2 groups) "c2" -> "y" and a dense 1x1 8 -> 4 "c3" -> "z"."""
    rng = np.random.default_rng(seed)
    shapes = [("w1", (8, 3, 3)), ("b1", (8,)), ("w2", (4, 4, 3)), ("b2", (4,)),
              ("w3", (4, 8, 1)), ("b3", (4,))]  # fmt: skip
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in shapes]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2", pads=[1, 1], group=2),
        helper.make_node("Conv", ["r", "w3", "b3"], ["z"], name="c3"),
    ]
    io = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [io("x", F, [1, 3, length])],
                              [io("y", F, [1, 4, length]), io("z", F, [1, 4, length])],
                              inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def infer_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its graph outputs' shapes filled in by ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for o in out.graph.output:
        v = known.get(o.name)
        if v is not None and v.type.tensor_type.HasField("shape"):
            o.type.CopyFrom(v.type)
    return out


# ------------------------------------------------------------------ ONNX Runtime


def session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:  # the graph as written, not ORT's own fusions of it
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto, seed: int = 1, batch: int | None = None,
              overrides: dict | None = None) -> dict:  # fmt: skip
    """Random normal feeds for every graph input (dynamic dims: batch or 1, others 8)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = []
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                dims.append((batch or 1) if i == 0 else 8)
        if batch is not None and dims:
            dims[0] = batch
        dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        out[v.name] = rng.standard_normal(dims).astype(dtype)
    out.update(overrides or {})
    return out


def run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(ref - got))
    return float(err / scale) if scale > 0 else float(err)


def max_rel(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict | None = None) -> float:
    """Largest relative difference over a's graph outputs (inf on a shape mismatch)."""
    feeds = feeds if feeds is not None else feeds_for(a)
    ra, rb = run(a, feeds), run(b, feeds)
    return max(rel_error(ra[o.name], rb[o.name]) for o in a.graph.output)


def declared_shape(value: onnx.ValueInfoProto) -> list:
    """A value's declared dims: ints, dim_param strings, or None when unknown."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def output_shapes(model: onnx.ModelProto) -> dict[str, list]:
    return {o.name: declared_shape(o) for o in model.graph.output}


def n_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


def init_batchnorm(torch, net):
    """`net` in eval mode with every BatchNorm2d's affine and running statistics drawn from a
    fixed seed (non-trivial BN, so folding it is tested), for the torch-export tests."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return net.eval()


def save(model: onnx.ModelProto, path) -> str:
    onnx.save_model(model, str(path))
    return str(path)


# ------------------------------------------------------------------ issue 11 graphs


def pad_conv_conv(value: str = "input", mode: str = "constant", pads=(1, 1, 1, 1),
                  axes: bool = False, hw: int = 16) -> onnx.ModelProto:  # fmt: skip
    """x (1,3,hw,hw) -> Pad(pads = top, left, bottom, right) -> Conv 3x3 p0 -> Conv 1x1 -> y.

    `value`: "input" (constant_value is a graph input), "none" (absent: 0), "zero" / "nonzero"
    (an initializer). `axes`: the Pad takes an axes input [2, 3] (opset 18).
    """
    g = G(seed=1, opset=18 if axes else 17)
    x = g.input("x", [1, 3, hw, hw])
    t, l, b, r = pads
    if axes:
        amounts = g.const([t, l, b, r], "pad_amounts", np.int64)
    else:
        amounts = g.const([0, 0, t, l, 0, 0, b, r], "pad_amounts", np.int64)
    ins = [x, amounts]
    if value == "input":
        ins.append(g.input("pad_value", []))
    elif value == "zero":
        ins.append(g.const(0.0, "pad_value"))
    elif value == "nonzero":
        ins.append(g.const(0.5, "pad_value"))
    if axes:
        if len(ins) == 2:
            ins.append("")
        ins.append(g.const([2, 3], "pad_axes", np.int64))
    p = g.node("Pad", ins, name="pad", mode=mode)
    a = g.conv(p, 3, 8, 3, name="conv_a", pads=[0, 0, 0, 0])
    y = g.conv(a, 8, 8, 1, name="conv_b", out="y")
    return g.model([(y, None)])


def conv_conv_affine(op: str = "Mul", const_shape=(1, 1, 1, 1, 1), value=None,
                     dtype=np.float32, c: int = 8, hw: int = 12) -> onnx.ModelProto:  # fmt: skip
    """x (1,3,hw,hw) -> Conv 3x3 p1 -> Conv 1x1 -> OP(., K) -> y, K of `const_shape`."""
    g = G(seed=2)
    x = g.input("x", [1, 3, hw, hw])
    a = g.conv(x, 3, c, 3, name="conv_a", pads=[1, 1, 1, 1])
    b = g.conv(a, c, c, 1, name="conv_b")
    if value is None:
        value = g.rng.uniform(0.5, 1.5, const_shape)
    k = np.broadcast_to(np.asarray(value), const_shape)
    if np.issubdtype(dtype, np.integer):
        kname = g.const(k, "k", dtype)
        b = g.node("Cast", [b], name="to_int", to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        y = g.node(op, [b, kname], name="affine")
        y = g.node("Cast", [y], name="to_float", out="y", to=F)
    else:
        y = g.node(op, [b, g.const(k, "k", dtype)], name="affine", out="y")
    return g.model([(y, None)])


def collision_model(kind: str = "merged") -> onnx.ModelProto:
    """Two chains: a linear 1x1 -> 3x3 run (merged by fuse) and an unrelated Conv whose weight
    initializer (or node / output name) already uses a name onnxmerge generates.

    kind "merged": initializer `chain0_merged_0_2_W` (nodes unnamed); "merged_B": its bias
    `chain0_merged_0_2_B`; "node": a node named `chain0_merged_0_2`; "tensor": an unrelated
    tensor named `chain0_merged_0_2_W` that is a graph output; "folded": a Conv with a BN
    after it whose generated `{conv}_W_folded0` exists on another Conv.
    """
    g = G(seed=3, names=kind in ("node", "folded"))
    x = g.input("x", [1, 4, 10, 10])
    # chain0: 1x1 (pads 0) -> 3x3 (pads 0): exact, so plain fuse merges it.
    a = g.conv(x, 4, 6, 1, name="conv_a", pads=[0, 0, 0, 0])
    b = g.conv(a, 6, 6, 3, name="conv_b", pads=[0, 0, 0, 0], out="y1")
    # an unrelated conv on the input, off the chain (a second consumer of x breaks nothing).
    w_name = {"merged": "chain0_merged_0_2_W", "merged_B": None, "node": None, "tensor": None,
              "folded": "conv_c_W_folded0"}[kind]  # fmt: skip
    r = g.node("Relu", [x], name="relu_u")
    u = g.conv(r, 4, 6, 3, name="chain0_merged_0_2" if kind == "node" else "conv_u",
               w_name=w_name, bias=kind != "merged_B", pads=[1, 1, 1, 1])  # fmt: skip
    if kind == "merged_B":
        g.nodes[-1].input.append(g.const(np.full(6, 3.0), "chain0_merged_0_2_B"))
    outs = [(b, None)]
    if kind == "tensor":
        g.nodes[-1].output[0] = "chain0_merged_0_2_W"
        u = "chain0_merged_0_2_W"
    if kind == "folded":
        # conv_c -> BN: the fold writes conv_c_W_folded0, which conv_u already reads.
        c = g.conv(u, 6, 6, 1, name="conv_c", pads=[0, 0, 0, 0])
        bn = [g.const(g.rng.uniform(0.5, 1.5, 6)), g.const(g.rng.standard_normal(6)),
              g.const(g.rng.standard_normal(6)), g.const(g.rng.uniform(0.5, 1.5, 6))]  # fmt: skip
        u = g.node("BatchNormalization", [c, *bn], name="bn_c")
    u = g.node("Relu", [u], name="relu_out", out="y2") if kind != "tensor" else u
    outs.append((u, None))
    return g.model(outs)


def autopad_model(auto_pad: str = "SAME_UPPER", first_k: int = 1, stride: int = 4,
                  c: int = 8, hw: int = 32) -> onnx.ModelProto:  # fmt: skip
    """x (1,c,hw,hw) -> Conv k=first_k stride auto_pad -> Conv 3x3 pads 0 -> y."""
    g = G(seed=4)
    x = g.input("x", [1, c, hw, hw])
    a = g.conv(x, c, c, first_k, name="conv_a", strides=[stride, stride], auto_pad=auto_pad)
    y = g.conv(a, c, c, 3, name="conv_b", pads=[0, 0, 0, 0], out="y")
    return g.model([(y, None)])


def valid_and_pads_model() -> onnx.ModelProto:
    """A Conv with auto_pad=VALID *and* explicit pads: the checker passes, ORT refuses it."""
    g = G(seed=5)
    x = g.input("x", [1, 3, 12, 12])
    a = g.conv(x, 3, 8, 3, name="conv_a", auto_pad="VALID", pads=[1, 1, 1, 1])
    y = g.conv(a, 8, 8, 1, name="conv_b", out="y")
    return g.model([(y, None)])


def dynamic_model(batch="N", hw=(None, None), paddle: bool = False) -> onnx.ModelProto:
    """x (batch, 3, H, W) -> Conv 3x3 p1 -> Relu -> Conv 3x3 p1 -> Conv 1x1 -> y (exact merge).

    `paddle=True`: dynamic dims written as dim_value -1 (as Paddle exports do), else dim_param.
    """
    g = G(seed=6)

    def dims(c):
        out = []
        for i, d in enumerate([batch, c, *hw]):
            if d is None:
                d = f"d{i}"
            out.append(-1 if paddle and isinstance(d, str) else d)
        return out

    x = g.input("x", dims(3))
    a = g.conv(x, 3, 8, 3, name="conv_a", pads=[1, 1, 1, 1])
    r = g.node("Relu", [a], name="relu")
    b = g.conv(r, 8, 8, 3, name="conv_b", pads=[1, 1, 1, 1])
    y = g.conv(b, 8, 4, 1, name="conv_c", pads=[0, 0, 0, 0], out="y")
    return g.model([(y, dims(4))])


def _set_dim(vi: onnx.ValueInfoProto, index: int, value: int) -> None:
    d = vi.type.tensor_type.shape.dim[index]
    d.Clear()
    d.dim_value = value


def lab_model(blocks: int = 2, c: int = 8, hw: int = 16, per_channel: bool = False,
              seed: int = 7) -> onnx.ModelProto:  # fmt: skip
    """PP-LCNetV3-style learnable affine blocks:

    stem Conv 3x3 -> LAB -> [Conv 3x3 dw -> LAB -> Conv 1x1 -> LAB] * blocks -> y,
    where LAB is Mul(a) -> Add(b) -> HardSwish -> Mul(c) -> Add(d).
    Scalars a, b, c, d (or per-channel (1, C, 1, 1) constants with `per_channel`).
    """
    g = G(seed=seed)
    x = g.input("x", [1, 3, hw, hw])
    t = g.conv(x, 3, c, 3, name="stem", pads=[1, 1, 1, 1])

    def scalar(lo, hi):
        shape = (1, c, 1, 1) if per_channel else ()
        return g.const(g.rng.uniform(lo, hi, shape))

    def lab(t, tag):
        t = g.node("Mul", [t, scalar(0.8, 1.2)], name=f"{tag}_lab1_mul")
        t = g.node("Add", [t, scalar(-0.1, 0.1)], name=f"{tag}_lab1_add")
        t = g.node("HardSwish", [t], name=f"{tag}_act")
        t = g.node("Mul", [t, scalar(0.8, 1.2)], name=f"{tag}_lab2_mul")
        return g.node("Add", [t, scalar(-0.1, 0.1)], name=f"{tag}_lab2_add")

    t = lab(t, "stem")
    for i in range(blocks):
        t = g.conv(t, c, c, 3, name=f"b{i}_dw", pads=[1, 1, 1, 1], group=c)
        t = lab(t, f"b{i}_dw")
        t = g.conv(t, c, c, 1, name=f"b{i}_pw", pads=[0, 0, 0, 0])
        t = lab(t, f"b{i}_pw")
    y = g.node("Identity", [t], name="out", out="y")
    return g.model([(y, None)])


def three_conv_chain(c: int = 8, hw: int = 16, seed: int = 8) -> onnx.ModelProto:
    """x -> conv_a 3x3 -> Relu -> conv_b 3x3 -> Relu -> conv_c 1x1 -> Relu -> conv_d 3x3 -> y."""
    g = G(seed=seed)
    x = g.input("x", [1, c, hw, hw])
    t = x
    for name, k in (("conv_a", 3), ("conv_b", 3), ("conv_c", 1), ("conv_d", 3)):
        t = g.conv(t, c, c, k, name=name, pads=[k // 2] * 4)
        if name != "conv_d":
            t = g.node("Relu", [t], name=f"{name}_relu")
    y = g.node("Identity", [t], name="out", out="y")
    return g.model([(y, None)])


def residual_model(collide: str | None = None, seed: int = 9) -> onnx.ModelProto:
    """x (1,8,12,12) -> conv_a 3x3 p1 -> Relu -> conv_b 3x3 p1 -> Add(x) -> Relu -> conv_c 3x3 p1
    -> y1; and, off the chain, Relu(x) -> conv_u 3x3 p1 -> y2, whose weight is named `collide`
    (a name onnxmerge generates for the fine-tune form, e.g. chain0_doubled_2_W)."""
    g = G(seed=seed)
    x = g.input("x", [1, 8, 12, 12])
    a = g.conv(x, 8, 8, 3, name="conv_a", pads=[1, 1, 1, 1])
    a = g.node("Relu", [a], name="relu_a")
    b = g.conv(a, 8, 8, 3, name="conv_b", pads=[1, 1, 1, 1])
    s = g.node("Add", [b, x], name="add")
    s = g.node("Relu", [s], name="relu_b")
    y1 = g.conv(s, 8, 8, 3, name="conv_c", pads=[1, 1, 1, 1], out="y1")
    r = g.node("Relu", [x], name="relu_u")
    y2 = g.conv(r, 8, 8, 3, name="conv_u", pads=[1, 1, 1, 1], w_name=collide, out="y2")
    return g.model([(y1, None), (y2, None)])


def plan_json(groups: list[dict], method: str = "layermerge") -> str:
    """A plan file (onnxmerge.plan.Plan's JSON) for `--from-plan` / `fuse --plan`.

    Each group: chain, start, end, kept, kernel, activation_kept (convs optional).
    """
    import json

    full = []
    for gr in groups:
        full.append({"latency_ms": 0.0, "importance": 0.0, "convs": [], **gr})
    return json.dumps(
        {
            "method": method,
            "backend": "ort-cpu",
            "target_speedup": None,
            "budget_ms": 1.0,
            "predicted_ms": 1.0,
            "measured_input_ms": 1.0,
            "measured_output_ms": 1.0,
            "groups": full,
            "fingerprint": {},
        }
    )


def names_unique(model: onnx.ModelProto) -> list[str]:
    """Names that occur twice: node names (non-empty), initializers, tensors produced."""
    from collections import Counter

    g = model.graph
    dup = []
    for kind, names in (
        ("node", [n.name for n in g.node if n.name]),
        ("initializer", [t.name for t in g.initializer]),
        ("tensor", [o for n in g.node for o in n.output if o]
         + [t.name for t in g.initializer] + [i.name for i in g.input
         if i.name not in {t.name for t in g.initializer}]),
    ):  # fmt: skip
        dup += [f"{kind} {n}" for n, c in Counter(names).items() if c > 1]
    return dup
