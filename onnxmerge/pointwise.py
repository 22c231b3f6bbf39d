"""Numeric evaluation of small pointwise regions, to recognise activations by what they compute.

A region (onnx-graphsurgeon nodes reading one tensor x and constants that are scalars or
per-channel) is a function f applied to every element of x, per channel. Evaluating f on a
grid of probe values tells which activation it is, however the exporter spelled it (Erf or
tanh GELU, x * Clip(x + 3, 0, 6) / 6, x * Sigmoid(x), ...), whether it is merely affine (no
activation at all), and its slope far on the positive side (an activation normalised so that
removing it means the identity has slope 1 there; a trailing constant scale that brings the
slope to 1 belongs to the activation).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxmerge.activations import FORMS, gelu_erf, gelu_tanh
from onnxmerge.graph.conv import attr_str

PROBE = np.concatenate([np.linspace(-8.0, 8.0, 129), [40.0, 80.0]])
_BIG = (-2, -1)  # indices of the two far probes in PROBE

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None]:
    """(min, max) of a Clip node (attributes before opset 11, inputs after); None = unbounded."""
    if "min" in node.attrs or "max" in node.attrs:
        return (float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf)))
    vals = []
    for i in (1, 2):
        t = node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
        v = np.asarray(t.values) if isinstance(t, gs.Constant) else None
        vals.append(None if v is None else float(v.reshape(-1)[0]))
    return vals[0], vals[1]


def _apply(node: gs.Node, args: list[np.ndarray | None]) -> np.ndarray:
    op, a = node.op, node.attrs
    x = args[0]
    if op == "Relu":
        return np.maximum(x, 0.0)
    if op == "LeakyRelu":
        return np.where(x < 0, float(a.get("alpha", 0.01)) * x, x)
    if op == "PRelu":
        return np.where(x < 0, args[1] * x, x)
    if op == "HardSwish":
        return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "HardSigmoid":
        return np.clip(float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0.0, 1.0)
    if op == "Gelu":
        return gelu_tanh(x) if attr_str(a.get("approximate", "none")) == "tanh" else gelu_erf(x)
    if op == "Elu":
        return np.where(x < 0, float(a.get("alpha", 1.0)) * np.expm1(np.minimum(x, 0)), x)
    if op == "Selu":
        alpha, gamma = float(a.get("alpha", 1.67326319)), float(a.get("gamma", 1.05070102))
        return gamma * np.where(x < 0, alpha * np.expm1(np.minimum(x, 0)), x)
    if op == "Celu":
        alpha = float(a.get("alpha", 1.0))
        return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))
    if op == "Softplus":
        return _softplus(x)
    if op == "ThresholdedRelu":
        return np.where(x > float(a.get("alpha", 1.0)), x, 0.0)
    if op == "Mish":
        return x * np.tanh(_softplus(x))
    if op == "Tanh":
        return np.tanh(x)
    if op == "Sigmoid":
        return _sigmoid(x)
    if op == "Clip":
        lo, hi = clip_bounds(node)
        return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    if op == "Erf":
        return _erf(x)
    if op in ("Neg", "Sqrt", "Exp", "Abs", "Log"):
        return {"Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Abs": np.abs, "Log": np.log}[
            op
        ](x)
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
        return fn[op](x, args[1]) if op != "Pow" else np.power(x, args[1])
    if op in ("Max", "Min"):
        present = [v for v in args if v is not None]
        out = present[0]
        for v in present[1:]:
            out = np.maximum(out, v) if op == "Max" else np.minimum(out, v)
        return out
    raise KeyError(op)


def evaluate(nodes: list[gs.Node], source: gs.Tensor, x: np.ndarray) -> np.ndarray | None:
    """The region's single open output for `source` = x (NCHW probe), or None if it cannot."""
    values = {id(source): x}
    out = x
    try:
        with np.errstate(all="ignore"):
            for node in nodes:
                args = []
                for t in node.inputs:
                    if not t.name:
                        args.append(None)
                    elif id(t) in values:
                        args.append(values[id(t)])
                    elif isinstance(t, gs.Constant):
                        args.append(np.asarray(t.values, np.float64))
                    else:
                        return None
                out = np.asarray(_apply(node, args), np.float64)
                values[id(node.outputs[0])] = out
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return out


def probe(channels: int) -> np.ndarray:
    """The probe values as an NCHW tensor: every channel sees every value (1, C, n, 1)."""
    return np.broadcast_to(PROBE[None, None, :, None], (1, channels, PROBE.size, 1)).copy()


def far_slope(y: np.ndarray) -> np.ndarray | None:
    """Per-channel slope of f far on the positive side, or None if f is not linear there."""
    y = y.reshape(y.shape[1], -1)
    far = y[:, list(_BIG)] / PROBE[list(_BIG)]
    if not np.all(np.isfinite(far)) or not np.allclose(far[:, 0], far[:, 1], rtol=1e-3, atol=1e-6):
        return None
    return far[:, 1]


def is_affine(y: np.ndarray) -> bool:
    """f(x) = a x + b per channel on the whole probe (so: no activation)."""
    return affine_coefficients(y) is not None


def kind_of(y: np.ndarray) -> str | None:
    """The registered activation kind f equals on the probe (every channel), else None."""
    y = y.reshape(y.shape[1], -1)
    for form in FORMS.values():
        for ref in form.references:
            r = ref(PROBE)
            if np.all(np.abs(y - r) <= 1e-4 * (1.0 + np.abs(r))):
                return form.kind
    return None


def affine_coefficients(y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (a, b) with f(x) = a*x + b on the whole probe, or None if f is not affine."""
    y = y.reshape(y.shape[1], -1)
    if not np.all(np.isfinite(y)):
        return None
    design = np.stack([PROBE, np.ones_like(PROBE)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y.T, rcond=None)
    resid = y.T - design @ coef
    if np.max(np.abs(resid)) > 1e-9 * max(1.0, float(np.max(np.abs(y)))):
        return None
    return coef[0], coef[1]
