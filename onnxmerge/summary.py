"""The before -> after summary every command that writes a model ends with.

Counted on the models themselves (independent of how they were built):
- Conv nodes (Conv and ConvTranspose) and all nodes;
- parameters: elements of the float initializers (and float Constant nodes);
- MACs: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul at the analyzed input
  shapes (Conv: N*O*Ho*Wo * (C/groups)*kh*kw; ConvTranspose, which scatters each input element
  onto a kernel: N*C*H*W * (O/groups)*kh*kw; Gemm/MatMul: M*N*K), from ONNX shape inference;
- file size: the serialized model's bytes.
Measured: latency of both on the backend (ms, interleaved medians) and the speedup; for
compress, how far the outputs moved on inputs no choice was made on where there are any (`--eval`
data, unused built-in photos: calibration.evaluation), else on the held-out calibration inputs
(top-1 agreement and KL for classifier-like outputs, relative error otherwise), per output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxmerge.calibration.evaluation import HELD_OUT, EvaluationSet
from onnxmerge.importance import log_probabilities
from onnxmerge.runtime import session


@dataclass
class ModelStats:
    """Counts of one model (see the module docstring)."""

    convs: int
    nodes: int
    params: int
    macs: int
    bytes: int


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for v in (*g.input, *g.output, *g.value_info):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


CONVS = ("Conv", "ConvTranspose")  # counted as "Conv nodes"


def _macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    if node.op_type in CONVS:  # each output (Conv) or input (ConvTranspose) element: w[1:]
        w = shapes.get(node.input[1], [])
        y = shapes.get(node.output[0] if node.op_type == "Conv" else node.input[0], [])
        return int(np.prod(y)) * int(np.prod(w[1:])) if len(w) >= 3 and y else 0
    if node.op_type in ("Gemm", "MatMul"):
        a, b = shapes.get(node.input[0], []), shapes.get(node.input[1], [])
        if len(a) < 2 or len(b) < 2:
            return 0
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        trans_b = any(x.name == "transB" and x.i for x in node.attribute)
        m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
        n = b[-2] if trans_b else b[-1]
        return int(np.prod(a[:-2])) * m * n * k
    return 0


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Counts of `model`, whose graph inputs must be static (the analyzed shapes)."""
    floats = {
        t.name: int(np.prod(t.dims))
        for t in model.graph.initializer
        if np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type), np.floating)
    }
    constants = sum(
        int(np.prod(a.t.dims))
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
        and np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type), np.floating)
    )
    shapes = _shapes(model)
    return ModelStats(
        convs=sum(n.op_type in CONVS for n in model.graph.node),
        nodes=len(model.graph.node),
        params=sum(floats.values()) + constants,
        macs=sum(_macs(n, shapes) for n in model.graph.node),
        bytes=model.ByteSize(),
    )


def fidelity(
    reference: onnx.ModelProto, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Per graph output, how far `model` is from `reference` on `feeds` (batch-1 dicts):
    {"top1": agreement, "kl": mean KL, "top1_se": the agreement's binomial standard error
    sqrt(p (1 - p) / n) over n > 1 inputs} for classifier-like outputs (N x K, K >= 2), else
    {"rel_error": ||a - b|| / ||a|| over all feeds, "worst_channel": c, "worst_rel_error":
    the same for channel c (axis 1) alone, the largest}: a whole-tensor error can hide a head
    of small numbers (a detector's class scores next to its boxes). With several feeds, "r2":
    the coefficient of determination R^2 = 1 - ||b - a||^2 / ||a - mean(a)||^2 of the output
    (a classifier's row-centred log-probabilities), the mean over the feeds: 1 is exact, 0
    or below no better than the original's average output, so it shows whether what varies
    with the input survived. Where the reference's own output hardly varies (relative spread
    below FLAT: random weights, or a network that ignores its input), "flat" holds that
    spread; where a classifier's top-1 class is the same on every feed, "one_class" holds it:
    agreement says little then."""
    if not feeds:
        return {}
    a, b = session(reference), session(model)
    names = [o.name for o in reference.graph.output]
    ref = [dict(zip(names, a.run(names, f), strict=True)) for f in feeds]
    out = [dict(zip(names, b.run(names, f), strict=True)) for f in feeds]
    result = {}
    for name in names:
        r = np.concatenate([x[name] for x in ref]).astype(np.float64)
        o = np.concatenate([x[name] for x in out]).astype(np.float64)
        spread = _spread(r) if len(feeds) > 1 else None
        if r.ndim == 2 and r.shape[1] >= 2:
            lr, lo = log_probabilities(r), log_probabilities(o)
            kl = float(np.sum(np.exp(lr) * (lr - lo), axis=1).mean())
            top1 = float(np.mean(r.argmax(1) == o.argmax(1)))
            result[name] = {"top1": top1, "kl": kl}
            if len(r) > 1:  # the binomial standard error: 32 inputs leave ~0.05 either way
                result[name]["top1_se"] = float(np.sqrt(top1 * (1 - top1) / len(r)))
            if len(feeds) > 1 and len(set(r.argmax(1))) == 1:
                result[name]["one_class"] = int(r.argmax(1)[0])
            r, o = lr - lr.mean(1, keepdims=True), lo - lo.mean(1, keepdims=True)  # for R^2
        else:
            err = float(np.linalg.norm(r - o) / max(np.linalg.norm(r), 1e-30))
            result[name] = {"rel_error": err}
            if r.ndim >= 2 and r.shape[1] > 1:
                d = np.swapaxes(r - o, 0, 1).reshape(r.shape[1], -1)
                n = np.swapaxes(r, 0, 1).reshape(r.shape[1], -1)
                scale = np.linalg.norm(n, axis=1)
                per = np.where(scale > 0, np.linalg.norm(d, axis=1) / np.maximum(scale, 1e-300), 0)
                c = int(np.argmax(per))
                result[name].update(worst_channel=c, worst_rel_error=float(per[c]))
        total = float(np.sum((r - r.mean(axis=0)) ** 2))
        if len(feeds) > 1 and total > 0:
            result[name]["r2"] = 1.0 - float(np.sum((o - r) ** 2)) / total
        if spread is not None and spread < FLAT:
            result[name]["flat"] = spread
    return result


FLAT = 1e-3  # an output whose relative spread over the inputs is below this says little


def _spread(values: np.ndarray) -> float:
    """||x - mean over the inputs (axis 0)|| / ||x||: how much an output varies per input."""
    norm = np.linalg.norm(values)
    return float(np.linalg.norm(values - values.mean(axis=0)) / norm) if norm > 0 else 0.0


# The held-out half is the one importance scores candidates on (importance.holdout_split), so
# the search chose the plan on it (calibration.evaluation says what this cost once).
HELD_OUT_NOTE = (
    "  (held out from the refit, but the search chose among plans on them: inputs it never saw "
    "may agree less; --eval DATA scores on inputs of yours it never saw)"
)


@dataclass
class Summary:
    """Before -> after of one written model (see the module docstring)."""

    before: ModelStats
    after: ModelStats
    backend: str = ""
    before_ms: float | None = None
    after_ms: float | None = None
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    fidelity_inputs: int = 0
    fidelity_on: str = HELD_OUT  # what the fidelity was measured on
    int8: list[dict] = field(default_factory=list)  # quantize.Int8Row as dicts (--int8)

    def to_dict(self) -> dict:
        """JSON-ready (`--json`)."""
        d = asdict(self)
        if self.before_ms and self.after_ms:
            d["speedup"] = self.before_ms / self.after_ms
        if self.int8:
            from onnxmerge.quantize import verdict

            d["int8_verdict"] = verdict(self.int8)
        return d

    def lines(self) -> list[str]:
        """An aligned before -> after table."""
        rows = [
            ("Conv nodes", f"{self.before.convs}", f"{self.after.convs}"),
            ("nodes", f"{self.before.nodes}", f"{self.after.nodes}"),
            ("parameters", _si(self.before.params), _si(self.after.params)),
            ("MACs", _si(self.before.macs), _si(self.after.macs)),
            ("file size", _si(self.before.bytes, "B"), _si(self.after.bytes, "B")),
        ]
        if self.before_ms and self.after_ms:
            rows.append(
                (
                    f"latency ({self.backend})",
                    f"{self.before_ms:.3f} ms",
                    f"{self.after_ms:.3f} ms  ({self.before_ms / self.after_ms:.2f}x)",
                )
            )
        width = max(len(r[0]) for r in rows)
        left = max(len(r[1]) for r in rows)
        out = [f"{'':{width}}  {'before':>{left}}  after"]
        out += [f"{a:{width}}  {b:>{left}}  {c}" for a, b, c in rows]
        for name, m in self.fidelity.items():
            where = f"on {self.fidelity_inputs} {self.fidelity_on}"
            if self.fidelity_inputs == 1:
                for many in (" inputs", " fields", " photos"):
                    where = where.replace(many, many[:-1], 1)
            out.append(f"output {name!r} {where}: {fidelity_text(m, True)}{caveat(m)}")
        if self.fidelity and self.fidelity_on == HELD_OUT:
            out.append(HELD_OUT_NOTE)
        return out + self._int8_lines()

    def _int8_lines(self) -> list[str]:
        """--int8: the compressed network, it quantized (written) and the input quantized
        alone, each against the original float network."""
        if not self.int8:
            return []
        from onnxmerge.quantize import SCHEME, verdict

        out = [
            f"INT8 ({SCHEME}; timed apart, scored on the same {self.fidelity_inputs} inputs; "
            "the table above is the float network, the file written the row so marked):"
        ]
        width = max(len(r["network"]) for r in self.int8)
        for r in self.int8:
            text = "; ".join(f"{n!r} {fidelity_text(m)}" for n, m in r["fidelity"].items())
            mark = "  (written)" if r.get("written") else ""
            size = _si(r["bytes"], "B")
            out.append(f"  {r['network']:{width}}  {r['ms']:.3f} ms  {r['speedup']:.2f}x  "
                       f"{size:>9}  {text}{mark}")  # fmt: skip
        return out + [f"  {verdict(self.int8)}"]


def fidelity_text(m: dict[str, float], with_r2: bool = False) -> str:
    """One output's fidelity (summary.fidelity's dict) in words (`with_r2`: and its R²)."""
    r2 = f", R² {m['r2']:.3g} over them" if with_r2 and "r2" in m else ""
    if "top1" in m:
        se = f" ± {m['top1_se']:.2f}" if m.get("top1_se") else ""
        return f"top-1 agreement {m['top1']:.2f}{se}, KL {m['kl']:.3g}{r2}"
    worst = ""
    if "worst_channel" in m:
        worst = f" (worst channel {m['worst_channel']}: {m['worst_rel_error']:.3g})"
    return f"relative error {m['rel_error']:.3g}{worst}{r2}"


def caveat(m: dict[str, float]) -> str:
    """Why one output's figures say little on these inputs ('' when they do not)."""
    if "flat" in m:
        return (f" (the original's output hardly varies over these inputs: relative spread "
                f"{m['flat']:.2g}; these figures say little)")  # fmt: skip
    if "one_class" in m:
        return (f" (the original gives class {m['one_class']} on every one of them: top-1 "
                "agreement says little, R² more)")  # fmt: skip
    if m.get("r2", 1.0) < 0:  # a small relative error beside an output that varies little
        return " (R² below 0: no closer to the original than its average output is)"
    return ""


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def summarize(analysis, out: onnx.ModelProto, plan, scored: EvaluationSet) -> Summary:
    """The Summary of `out` compressed from `analysis` (analysis.Analysis) by `plan`
    (plan.Plan, the result's own when asked: a plan measured again reports the new times):
    before -> after counts, the measured latencies and the fidelity on `scored`
    (calibration.evaluation: inputs no choice was made on, or the held-out calibration half)."""
    from onnxmerge.graph import with_input_shapes

    return Summary(
        model_stats(analysis.model),
        model_stats(with_input_shapes(out, analysis.input_shapes)),
        plan.backend,
        plan.measured_input_ms,
        plan.measured_output_ms,
        fidelity(analysis.model, out, scored.feeds),
        len(scored.feeds),
        scored.on,
    )
