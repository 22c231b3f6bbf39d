"""Built-in example CNNs, written with onnx.helper in the idioms exporters emit.

The topologies follow the published architectures (ResNet, MobileNetV2/V3, EfficientNet,
VGG, a YOLO-style SiLU detector); weights are seeded random, so these models are for
structure, latency and exactness checks, not accuracy. `width` scales channels and
`size` sets the square input resolution; BatchNormalization is left unfolded so the
normalizer is exercised.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.activations import spell


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


class Builder:
    """Appends nodes and initializers; names are generated."""

    def __init__(self, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        """Add an initializer; return its generated name."""
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        """Append a node; return its (generated) output name."""
        name = self._name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x, cin, cout, k=3, stride=1, groups=1, pads=None, dilation=1, bn=True, gain=1.0):
        """A conv (He-initialized, gain-scaled), with an unfolded BatchNormalization by default."""
        fan_in = cin // groups * k * k
        w = gain * self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        p = dilation * (k - 1) // 2
        attrs = dict(
            kernel_shape=[k, k],
            strides=[stride, stride],
            group=groups,
            pads=list(pads) if pads is not None else [p, p, p, p],
            dilations=[dilation] * 2,
        )
        inputs = [x, self.const(w.astype(np.float32), "W")]
        if not bn:
            inputs.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "B"))
        y = self.node("Conv", inputs, "conv", **attrs)
        if bn:
            r = self.rng
            params = [
                r.uniform(0.5, 1.5, cout),
                r.normal(0, 0.1, cout),
                r.normal(0, 0.1, cout),
                r.uniform(0.5, 1.5, cout),
            ]
            y = self.node(
                "BatchNormalization",
                [y] + [self.const(p.astype(np.float32)) for p in params],
                "bn",
                epsilon=1e-5,
            )
        return y

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        """activations.Emitter: one node named after its op."""
        return self.node(op_type, inputs, **attrs)

    def act(self, x: str, kind: str | None, channels: int = 1) -> str:
        """Activation `kind` as exporters spell it (activations.FORMS); "hardswish_decomposed"
        is Paddle's x * Clip(x + 3, 0, 6) / 6."""
        if kind is None:
            return x
        if kind == "hardswish_decomposed":
            return spell(self, "hardswish", x, channels, self.opset, style="paddle")
        return spell(self, kind, x, channels, self.opset)

    def se(self, x: str, c: int, squeeze: int, gate: str = "Sigmoid", inner: str = "relu"):
        """Squeeze-excitation: GlobalAveragePool, two 1x1 convs, a gate, and the gating Mul."""
        s = self.node("GlobalAveragePool", [x])
        s = self.act(self.conv(s, c, squeeze, k=1, bn=False), inner)
        s = self.conv(s, squeeze, c, k=1, bn=False)
        s = self.node(gate, [s]) if gate == "Sigmoid" else self.node(gate, [s], alpha=1 / 6)
        return self.node("Mul", [x, s])

    def head(self, x: str, c: int, classes: int) -> str:
        """Classifier head: GlobalAveragePool, Flatten, Gemm."""
        x = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        w = self.rng.normal(0, 0.01, (classes, c)).astype(np.float32)
        return self.node(
            "Gemm", [x, self.const(w), self.const(np.zeros(classes, np.float32))], transB=1
        )

    def model(self, size: int, output: str, name: str, channels: int = 3) -> onnx.ModelProto:
        """The model (opset, IR 8, shapes inferred) with a square `size` input."""
        out = onnx.helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
            [out],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


# The last conv of a residual branch starts small (as trained ResNets end up, and as Fixup or
# zero-init-residual start): with full He init the activations double at every block and
# ResNet-50's logits reach ~1e3, a saturated softmax that makes every importance score ~0.
RESIDUAL_GAIN = 0.3


def resnet(depth: int = 18, width: float = 1.0, size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18/34 (basic blocks) or -50 (bottlenecks), torchvision layout."""
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    bottleneck = depth >= 50
    b = Builder(seed)
    c0 = _round8(64 * width)
    x = b.act(b.conv("input", 3, c0, k=7, stride=2), "relu")
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = c0
    for stage, blocks in enumerate(layers):
        mid = _round8(64 * width * 2**stage)
        cout = mid * 4 if bottleneck else mid
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            if bottleneck:
                y = b.act(b.conv(x, cin, mid, k=1), "relu")
                y = b.act(b.conv(y, mid, mid, k=3, stride=stride), "relu")
                y = b.conv(y, mid, cout, k=1, gain=RESIDUAL_GAIN)
            else:
                y = b.act(b.conv(x, cin, mid, k=3, stride=stride), "relu")
                y = b.conv(y, mid, cout, k=3, gain=RESIDUAL_GAIN)
            skip = b.conv(x, cin, cout, k=1, stride=stride) if stride != 1 or cin != cout else x
            x = b.act(b.node("Add", [y, skip]), "relu")
            cin = cout
    return b.model(size, b.head(x, cin, 1000), f"resnet{depth}")


MBV2_SETTINGS = [  # torchvision inverted residuals: expansion t, channels c, repeats n, stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(width: float = 1.0, size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2: ReLU6 as Clip(0, 6), 17 inverted residual blocks, 10 with a skip."""
    b = Builder(seed)
    cin = _round8(32 * width)
    x = b.act(b.conv("input", 3, cin, stride=2), "relu6")
    for t, c, n, s in MBV2_SETTINGS:
        cout = _round8(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = b.act(b.conv(y, cin, hidden, k=1), "relu6")
            y = b.act(b.conv(y, hidden, hidden, k=3, stride=stride, groups=hidden), "relu6")
            y = b.conv(y, hidden, cout, k=1)
            x = b.node("Add", [x, y]) if stride == 1 and cin == cout else y
            cin = cout
    last = _round8(1280 * max(1.0, width))
    x = b.act(b.conv(x, cin, last, k=1), "relu6")
    return b.model(size, b.head(x, last, 1000), "mobilenet_v2")


def mobilenet_v3(
    width: float = 1.0, size: int = 224, seed: int = 0, decomposed: bool = False
) -> onnx.ModelProto:
    """MobileNetV3-Small-like: HardSwish, ReLU, SE with HardSigmoid gates."""
    hs = "hardswish_decomposed" if decomposed else "hardswish"
    cfg = [
        (3, 16, 16, True, "relu", 2),
        (3, 72, 24, False, "relu", 2),
        (3, 88, 24, False, "relu", 1),
        (5, 96, 40, True, hs, 2),
        (5, 240, 40, True, hs, 1),
        (5, 120, 48, True, hs, 1),
        (5, 288, 96, True, hs, 2),
        (5, 576, 96, True, hs, 1),
    ]
    b = Builder(seed)
    cin = _round8(16 * width)
    x = b.act(b.conv("input", 3, cin, stride=2), hs)
    for k, exp, c, se, act, s in cfg:
        hidden, cout = _round8(exp * width), _round8(c * width)
        y = x if hidden == cin else b.act(b.conv(x, cin, hidden, k=1), act)
        y = b.act(b.conv(y, hidden, hidden, k=k, stride=s, groups=hidden), act)
        if se:
            y = b.se(y, hidden, _round8(hidden / 4), gate="HardSigmoid")
        y = b.conv(y, hidden, cout, k=1)
        x = b.node("Add", [x, y]) if s == 1 and cin == cout else y
        cin = cout
    last = _round8(576 * width)
    x = b.act(b.conv(x, cin, last, k=1), hs)
    return b.model(size, b.head(x, last, 1000), "mobilenet_v3")


def efficientnet_b0(width: float = 1.0, size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0: MBConv with SiLU (Sigmoid * x) and SE gates."""
    cfg = [
        (1, 3, 16, 1, 1),
        (6, 3, 24, 2, 2),
        (6, 5, 40, 2, 2),
        (6, 3, 80, 3, 2),
        (6, 5, 112, 3, 1),
        (6, 5, 192, 4, 2),
        (6, 3, 320, 1, 1),
    ]
    b = Builder(seed)
    cin = _round8(32 * width)
    x = b.act(b.conv("input", 3, cin, stride=2), "silu")
    for t, k, c, n, s in cfg:
        cout = _round8(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.act(b.conv(x, cin, hidden, k=1), "silu")
            y = b.act(b.conv(y, hidden, hidden, k=k, stride=stride, groups=hidden), "silu")
            y = b.se(y, hidden, max(1, cin // 4), inner="silu")
            y = b.conv(y, hidden, cout, k=1)
            x = b.node("Add", [x, y]) if stride == 1 and cin == cout else y
            cin = cout
    last = _round8(1280 * width)
    x = b.act(b.conv(x, cin, last, k=1), "silu")
    return b.model(size, b.head(x, last, 1000), "efficientnet_b0")


def vgg(width: float = 1.0, size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """VGG-11-BN: 3x3 conv runs between max-pools."""
    b = Builder(seed)
    x, cin = "input", 3
    for convs, c in [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)]:
        for _ in range(convs):
            cout = _round8(c * width)
            x = b.act(b.conv(x, cin, cout), "relu")
            cin = cout
        x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return b.model(size, b.head(x, cin, 1000), "vgg11_bn")


def yolo(width: float = 0.25, size: int = 160, seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style SiLU backbone + neck: C2f blocks (Split/Concat), SPPF, Resize, Concat."""
    b = Builder(seed)

    def cbs(x, cin, cout, k=3, s=1):
        return b.act(b.conv(x, cin, cout, k=k, stride=s), "silu")

    def c2f(x, cin, cout, n, shortcut=True):
        y = cbs(x, cin, cout, k=1)
        half = cout // 2
        parts = list(_split(y, half))
        cur = parts[-1]
        for _ in range(n):
            z = cbs(cbs(cur, half, half), half, half)
            cur = b.node("Add", [cur, z]) if shortcut else z
            parts.append(cur)
        return cbs(b.node("Concat", parts, axis=1), half * len(parts), cout, k=1)

    def _split(y, half):
        split = b.const(np.array([half, half], np.int64))
        names = [b._name("split"), b._name("split")]
        b.nodes.append(helper.make_node("Split", [y, split], names, name=names[0] + "_n", axis=1))
        return names

    c = [_round8(64 * width), _round8(128 * width), _round8(256 * width), _round8(512 * width)]
    x = cbs("input", 3, c[0], s=2)
    x = cbs(x, c[0], c[1], s=2)
    x = c2f(x, c[1], c[1], 1)
    p3 = c2f(cbs(x, c[1], c[2], s=2), c[2], c[2], 2)
    x = cbs(p3, c[2], c[3], s=2)
    x = c2f(x, c[3], c[3], 1)
    y = cbs(x, c[3], c[3] // 2, k=1)  # SPPF
    pools = [y]
    for _ in range(3):
        pools.append(b.node("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2]))
    p5 = cbs(b.node("Concat", pools, axis=1), c[3] * 2, c[3], k=1)
    scales = b.const(np.array([1, 1, 2, 2], np.float32))
    up = b.node("Resize", [p5, "", scales], mode="nearest")
    x = c2f(b.node("Concat", [up, p3], axis=1), c[3] + c[2], c[2], 1, shortcut=False)
    out = b.conv(x, c[2], 84, k=1, bn=False)
    return b.model(size, out, "yolo")


MODELS = {
    "resnet18": lambda **kw: resnet(18, **kw),
    "resnet50": lambda **kw: resnet(50, **kw),
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "efficientnet_b0": efficientnet_b0,
    "vgg": vgg,
    "yolo": yolo,
}
