"""ONNX Runtime on the CPU for onnxmerge's own checks: sessions, runs, random feeds, differences.

Not for timing (latency/ does that): these sessions run the reference network for
importance and calibration, check that rewritten models load, and compare outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# ONNX Runtime's own log: fatal only (its errors come back as exceptions, which onnxmerge turns
# into one line); `onnxmerge -v` sets 2 (warnings).
ORT_LOG_SEVERITY = 4


def set_ort_logging(verbose: bool) -> None:
    """Let ONNX Runtime's warnings through (verbose) or keep its log quiet (default): in
    onnxmerge's sessions and, as the default logger's level, in those libraries open
    (onnx-graphsurgeon's constant folding printed ORT's optimizer warnings on a user's
    terminal)."""
    import onnxruntime as ort

    global ORT_LOG_SEVERITY
    ORT_LOG_SEVERITY = 2 if verbose else 4
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)


@dataclass
class Difference:
    """Largest differences between two tensors (or a region of them)."""

    max_abs: float
    max_rel: float  # max |a - b| / max |a|: relative to the reference's scale

    def __str__(self) -> str:
        return f"max abs {self.max_abs:.3g}, rel {self.max_rel:.3g}"


def difference(ref: np.ndarray, out: np.ndarray) -> Difference:
    """Largest absolute and relative (to max |ref|) difference of two arrays (float64).
    Equal entries (the same inf, NaN against NaN) differ by 0; any other non-finite
    difference is inf."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.size == 0:
        return Difference(0.0, 0.0)
    with np.errstate(invalid="ignore"):
        d = np.abs(ref - out)
    d[(ref == out) | (np.isnan(ref) & np.isnan(out))] = 0.0
    d[np.isnan(d)] = np.inf
    err = float(np.max(d))
    finite = np.abs(ref[np.isfinite(ref)])
    scale = float(np.max(finite)) if finite.size else 0.0
    return Difference(err, err / scale if scale > 0 else err)


def session(model: onnx.ModelProto, threads: int = 2):
    """An ONNX Runtime CPU session (2 threads, no spinning, errors only in the log)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = ORT_LOG_SEVERITY
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int | None = None) -> dict:
    """Seeded standard-normal feeds of every graph input's declared (static) shape."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tt = value.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        if batch is not None and shape:
            shape[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named intermediate tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> dict:
    """Every graph output (plus the named intermediate `outputs`) by name."""
    if outputs:
        model = with_outputs(model, outputs)
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def compare_outputs(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> dict[str, Difference]:
    """Per graph output of `a`, the difference of `b` from it on one random input."""
    feeds = random_inputs(a, seed)
    ra, rb = run(a, feeds), run(b, feeds)
    return {name: difference(ra[name], rb[name]) for name in [o.name for o in a.graph.output]}


def check_runs(model: onnx.ModelProto) -> None:
    """A rewritten model must pass the checker and load in ONNX Runtime (a bug otherwise)."""
    onnx.checker.check_model(model)
    session(model)


def check_user_model(model: onnx.ModelProto) -> None:
    """The user's model must load and run in ONNX Runtime at its (static) input shapes.

    Raises OnnxMergeError with ONNX Runtime's first line otherwise: a file the runtime
    refuses, or an input shape the model cannot run at, is the user's to fix, not a bug.
    """
    from onnxmerge.errors import OnnxMergeError

    try:
        sess = session(model)
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise OnnxMergeError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
    feeds = random_inputs(model)
    try:
        sess.run(None, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items())
        raise OnnxMergeError(
            f"the model does not run at input shape {shapes} in ONNX Runtime "
            f"({_first_line(exc)}); give another --input-shape"
        ) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.removeprefix("[ONNXRuntimeError] : ")
