"""The registry of activation forms: one entry per canonical activation kind.

Each form says, once, everything onnxmerge needs to know about an activation:
- `ops`: the ONNX ops that are this activation on their own (the matcher's op pattern;
  Clip is told apart by its bounds, see match.py);
- `references`: numpy functions f(x) it equals, so a decomposed spelling (x*Sigmoid(x),
  0.5*x*(1+Erf(x/sqrt 2)), x*Clip(x+3,0,6)/6, ...) is recognised by what it computes
  (pointwise.kind_of);
- `spell`: how exporters write it in ONNX, which the latency models time (so the runtime fuses
  it as it would in the user's network) and the example zoo builds; a form without one is
  timed as `timed_as`;
- the linear replacement: removing an activation replaces it with its affine asymptote on the
  positive side, f(x) ~ a*x + b for large x. For every registered kind that is the identity
  (a = 1, b = 0); a region with its own trailing affine ("learnable affine blocks",
  Mul/Add after the activation) has a = c, b = d, which pointwise.asymptote measures and the
  rewrite folds into the conv before it.

Adding a form: one entry in FORMS (and a case in pointwise._apply for a new single op).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Emitter(Protocol):
    """What a form's `spell` writes through: a builder of ONNX nodes and constants."""

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        """Append a node; return its (single) output name."""

    def const(self, value: np.ndarray) -> str:
        """Add a float constant (the model's dtype); return its name."""


Spell = Callable[[Emitter, str, int, int, str], str]  # (emit, x, channels, opset, style) -> y


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    """GELU, exact (erf) form."""
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def gelu_tanh(x):
    """GELU, tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


def _relu(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    return e.op("Relu", [x])


def _clip(lo: float, hi: float) -> Spell:
    def spell(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
        return e.op("Clip", [x, e.const(_f32(lo)), e.const(_f32(hi))])

    return spell


def _leaky(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    return e.op("LeakyRelu", [x], alpha=0.01)


def _prelu(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    slope = np.full((c, 1, 1), 0.25) + np.linspace(0, 0.1, c)[:, None, None]
    return e.op("PRelu", [x, e.const(_f32(slope))])


def _hardswish(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    if style == "paddle":  # x * Clip(x + 3, 0, 6) / 6
        shifted = e.op("Add", [x, e.const(_f32(3))])
        gate = e.op("Clip", [shifted, e.const(_f32(0)), e.const(_f32(6))])
        return e.op("Div", [e.op("Mul", [x, gate]), e.const(_f32(6))])
    if opset >= 14:
        return e.op("HardSwish", [x])
    return e.op("Mul", [x, e.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)])


def _silu(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    return e.op("Mul", [x, e.op("Sigmoid", [x])])


def _gelu(e: Emitter, x: str, c: int, opset: int, style: str) -> str:
    if opset >= 20:
        return e.op("Gelu", [x])
    # torch.onnx's decomposition below opset 20; ORT fuses it back into one Gelu kernel.
    erf = e.op("Erf", [e.op("Div", [x, e.const(_f32(math.sqrt(2.0)))])])
    half = e.op("Mul", [x, e.op("Add", [erf, e.const(_f32(1.0))])])
    return e.op("Mul", [half, e.const(_f32(0.5))])


@dataclass(frozen=True)
class ActivationForm:
    """One canonical activation kind (see the module docstring)."""

    kind: str
    ops: tuple[str, ...] = ()
    references: tuple[Callable[[np.ndarray], np.ndarray], ...] = field(default=())
    spell: Spell | None = None
    timed_as: str | None = None


FORMS: dict[str, ActivationForm] = {
    f.kind: f
    for f in (
        ActivationForm("relu", ("Relu",), (lambda x: np.maximum(x, 0.0),), _relu),
        ActivationForm("relu6", (), (lambda x: np.clip(x, 0.0, 6.0),), _clip(0.0, 6.0)),
        ActivationForm("clip", (), (), _clip(-1.0, 1.0)),
        ActivationForm("leaky_relu", ("LeakyRelu",), (), _leaky),
        ActivationForm("prelu", ("PRelu",), (), _prelu),
        ActivationForm(
            "hardswish",
            ("HardSwish",),
            (lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,),
            _hardswish,
        ),
        ActivationForm("silu", (), (lambda x: x * _sigmoid(x),), _silu),
        ActivationForm("gelu", ("Gelu",), (gelu_erf, gelu_tanh), _gelu),
        # Any other pointwise non-linearity: removable, timed as the common op it costs about
        # as much as.
        ActivationForm(
            "other",
            (
                "Elu",
                "Selu",
                "Celu",
                "Softplus",
                "ThresholdedRelu",
                "Mish",
                "Tanh",
                "Sigmoid",
                "HardSigmoid",
            ),
            timed_as="relu",
        ),  # fmt: skip
    )
}

#: Kinds the latency models can build (ConvSignature.activation takes these).
TIMED = tuple(k for k, f in FORMS.items() if f.spell is not None)

#: Single ONNX op -> kind (Clip is decided by its bounds in the matcher).
OP_KINDS: dict[str, str] = {op: f.kind for f in FORMS.values() for op in f.ops}


def latency_kind(kind: str | None) -> str | None:
    """The kind whose latency model times `kind` (None: no activation)."""
    if kind is None:
        return None
    form = FORMS[kind]
    return form.kind if form.spell is not None else form.timed_as


def spell(
    emit: Emitter, kind: str, x: str, channels: int, opset: int = 17, style: str = "torch"
) -> str:
    """Write activation `kind` on tensor `x` the way exporters do; return its output name.

    `style` picks an exporter idiom where they differ ("torch", or "paddle" for the
    decomposed x*Clip(x+3,0,6)/6 HardSwish). Raises KeyError for a kind with no spelling.
    """
    form = FORMS[latency_kind(kind) or kind]
    if form.spell is None:
        raise KeyError(f"no ONNX spelling for activation {kind!r}")
    return form.spell(emit, x, channels, opset, style)
