"""INT8 after compression (onnxmerge.quantize, `--int8`): ONNX Runtime's static QDQ, the
report beside INT8 of the input alone, and its failures as one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.errors import OnnxMergeError
from onnxmerge.quantize import quantize_int8
from onnxmerge.runtime import run


def _feeds(model: onnx.ModelProto, n: int, seed: int = 0) -> list[dict]:
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_int8_is_qdq_and_close_to_the_float_network() -> None:
    """The quantized network has QuantizeLinear / DequantizeLinear pairs around its convs,
    the same inputs and outputs, and on held-out inputs stays near the float network in ONNX
    Runtime (per-channel INT8 of a small ResNet: a few percent, far below a broken scale)."""
    model = zoo.resnet(18, width=0.25, size=32)
    q = quantize_int8(model, _feeds(model, 8))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert [i.name for i in q.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
    for feed in _feeds(model, 4, seed=1):
        (ref,), (got,) = run(model, feed).values(), run(q, feed).values()
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert rel < 0.1, rel


def test_int8_failures_are_one_line_errors(monkeypatch) -> None:
    model = zoo.resnet(18, width=0.25, size=32)
    with pytest.raises(OnnxMergeError, match="at least one calibration input"):
        quantize_int8(model, [])
    import onnxruntime.quantization as q

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported op\nsecond line")

    monkeypatch.setattr(q, "quantize_static", fail)
    with pytest.raises(
        OnnxMergeError, match="could not quantize the model to INT8: unsupported op$"
    ):
        quantize_int8(model, _feeds(model, 2))


def test_int8_after_compress_reports_int8_alone_and_is_written(tmp_path, macs_backend) -> None:
    """api.quantize_result: the result's model becomes the compressed network quantized (QDQ,
    same inputs and outputs), written as such; the summary (text and JSON) sets it beside the
    compressed float network and the input quantized alone, each with a speedup over the
    original (timed apart, ort-cpu) and its fidelity on the summary's inputs."""
    from onnxmerge import api

    model = zoo.mobilenet_v2(width=0.25, size=32)
    res = api.compress(model, "max", kind="width", width_align=4, calib_count=8,
                       backend=macs_backend, cache_dir=tmp_path / "c", progress=False)  # fmt: skip
    floating = res.model
    rows = api.quantize_result(res)
    assert [r.network for r in rows] == ["onnxmerge", "onnxmerge + INT8", "INT8 alone"]
    assert all(r.speedup > 0 and r.fidelity and r.bytes > 0 for r in rows)
    assert rows[1].bytes < rows[0].bytes  # int8 weights
    assert rows[0].fidelity == res.table.fidelity  # the float network, on the same inputs
    out = tmp_path / "o.onnx"
    api.write_result(res, out, tmp_path / "o.plan.json")
    written = onnx.load(out)
    assert "QuantizeLinear" in {n.op_type for n in written.graph.node}
    assert [o.name for o in written.graph.output] == [o.name for o in floating.graph.output]
    assert [r["network"] for r in res.table.to_dict()["int8"]] == [r.network for r in rows]
    text = "\n".join(res.table.lines())
    assert "INT8 alone" in text and "(written)" in text and "top-1 agreement" in text
    assert f"scored on the same {res.table.fidelity_inputs} inputs" in text  # the summary's
    assert [r.written for r in rows] == [False, True, False]
    assert res.table.to_dict()["int8_verdict"] in text


def test_cli_int8_needs_ort_cpu(run_cli, tmp_path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(zoo.mobilenet_v2(width=0.25, size=32), src)
    r = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.2", "--int8", "--backend", "torch")
    assert r.rc == 2 and len(r.stderr_lines) == 1 and "--int8" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


@settings(max_examples=60, deadline=None)
@given(
    gain=st.floats(0.5, 2.0),
    dq=st.floats(0.0, 3.0),
    da=st.floats(0.0, 3.0),
    classifier=st.booleans(),
)
def test_the_verdict_says_whether_compressing_first_paid(gain, dq, da, classifier) -> None:
    """The INT8 report's last line, against INT8 alone: faster only beyond SAME_SPEED (noise),
    closer only beyond SAME_FIDELITY of the summed distortion (KL, or relative error for other
    outputs; a review read "closer (error 0.00511 vs 0.00511)")."""
    from onnxmerge.quantize import SAME_FIDELITY, SAME_SPEED, verdict

    key = "kl" if classifier else "rel_error"
    rows = [{"network": "onnxmerge", "speedup": 1.0, "fidelity": {}},
            {"network": "onnxmerge + INT8", "speedup": 1.5 * gain, "fidelity": {"y": {key: dq}}},
            {"network": "INT8 alone", "speedup": 1.5, "fidelity": {"y": {key: da}}}]  # fmt: skip
    line = verdict(rows)
    assert ("KL" in line) == classifier
    tie = abs(dq - da) <= SAME_FIDELITY * max(dq, da)
    if gain > 1 + SAME_SPEED:
        assert "did not pay" not in line
        assert ("about as close" in line) == tie and ("further" in line) == (dq > da and not tie)
    elif dq < da and not tie:
        assert "closer" in line and "did not pay" not in line
    else:
        assert "did not pay" in line and ("about as close" in line) == tie
