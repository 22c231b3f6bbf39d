"""The torch backend's half-precision path (on the CPU too) and the torch backend on CUDA
(gpu-marked: skipped without a CUDA device for PyTorch).

dtype="float16" runs every model in half precision, a float32 network too (as `module.half()`
would), so compress() times its whole networks at the latency table's precision.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import zoo
from onnxmerge.latency import (
    LatencyTable,
    MeasurePolicy,
    conv_model,
    get_backend,
    random_feed,
    time_model,
)
from onnxmerge.signature import ConvSignature

torch = pytest.importorskip("torch")

QUICK = MeasurePolicy(warmup_runs=5, warmup_s=0.01, block_s=0.005, max_s=0.3)
REPO = Path(__file__).resolve().parents[1]


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for PyTorch")


def _sig(cin: int = 16, cout: int = 16, hw: int = 14, **kw) -> ConvSignature:
    return ConvSignature(cin, cout, (3, 3), (1, 1), (1, 1, 1, 1), 1, (hw, hw), **kw)


def _cast_model() -> onnx.ModelProto:
    """Conv -> Cast(to float32) -> Relu -> Conv: a float32 Cast mid-network."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5, "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) / 3, "w2"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        n("Cast", ["c1"], ["f"], to=TensorProto.FLOAT),
        n("Relu", ["f"], ["r"]),
        n("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(backend, model: onnx.ModelProto) -> np.ndarray:
    (out,) = backend.run(backend.load(model.SerializeToString()), random_feed(model))
    return out


# -- half precision, on the CPU ---------------------------------------------------------------
@pytest.mark.parametrize(
    "model", [_cast_model(), conv_model(_sig(activation="relu6"))], ids=["cast", "conv"]
)
def test_float16_backend_runs_a_float32_model_in_half(model: onnx.ModelProto) -> None:
    half, full = get_backend("torch", dtype="float16"), get_backend("torch")
    graph = half.load(model.SerializeToString())
    assert {t.dtype for t in graph.consts.values() if t.is_floating_point()} == {torch.float16}
    got, want = _run(half, model), _run(full, model)
    assert got.dtype == np.float16 and want.dtype == np.float32
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_float32_backend_leaves_models_as_stored() -> None:
    model = conv_model(_sig(residual=True), dtype="float16")
    backend = get_backend("torch")
    assert backend.load(model.SerializeToString()).dtype is None
    assert _run(backend, model).dtype == np.float16  # a float16 model stays float16
    half = get_backend("torch", dtype="float16", policy=QUICK)
    assert time_model(conv_model(_sig()), half).median_ms > 0


# -- CUDA ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_latency_of_a_small_conv(dtype: str, tmp_path: Path) -> None:
    _cuda()
    backend = get_backend("torch", device="cuda", dtype=dtype, policy=QUICK)
    fp = backend.fingerprint()
    assert fp["device"] == torch.cuda.get_device_name("cuda") and fp["cudnn"]
    sigs = [_sig(32, 32, 28, activation="relu"), _sig(32, 32, 28, residual=True)]
    with LatencyTable(tmp_path, backend) as table:
        ms = table.measure_all(sigs, progress=False)
        assert table.stats.new == 2
    assert all(0 < v < 100 for v in ms.values())
    with LatencyTable(tmp_path, backend) as table:  # a second table reads them back
        assert table.measure_all(sigs, progress=False) == ms and table.stats.new == 0


@pytest.mark.gpu
def test_cuda_float16_matches_float32() -> None:
    _cuda()
    model = conv_model(_sig(16, 24, 20, activation="hardswish", residual=True))
    feed = random_feed(model)
    want = get_backend("torch").run(get_backend("torch").load(model.SerializeToString()), feed)
    half = get_backend("torch", device="cuda", dtype="float16", policy=QUICK)
    graph = half.load(model.SerializeToString())
    assert all(t.device.type == "cuda" for t in graph.consts.values() if t.is_floating_point())
    (got,) = half.run(graph, feed)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want[0], rtol=2e-2, atol=2e-2)
    # fp16 conv model (fp16 weights and inputs) and the fp32 model run as half: both time
    assert time_model(conv_model(_sig(16, 24, 20), dtype="float16"), half).median_ms > 0
    assert time_model(model, half).median_ms > 0


@pytest.mark.gpu
def test_cuda_graph_kernel_probe_of_gpu_check() -> None:
    _cuda()
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "gpu_check", REPO / "benchmarks" / "gpu_check.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    gc = sys.modules["gpu_check"]
    for dtype in ("float32", "float16"):
        small = gc.graph_kernel_ms(_sig(64, 64, 28), 1, dtype)
        big = gc.graph_kernel_ms(_sig(64, 512, 56), 8, dtype)
        assert 0 < small < big < 100


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_compress_a_small_resnet(dtype: str, tmp_path: Path) -> None:
    _cuda()
    from onnxmerge.compress import compress

    model = zoo.resnet(18, width=0.25, size=64)
    res = compress(
        model,
        "max",
        kind="depth",
        backend="torch",
        backend_options={"device": "cuda", "dtype": dtype, "policy": QUICK},
        cache_dir=tmp_path,
        calibrate=False,
        calib_count=4,
        progress=False,
    )
    plan = res.plan
    assert plan.fingerprint["device"] == torch.cuda.get_device_name("cuda")
    assert plan.fingerprint["dtype"] == dtype
    # Eager CUDA at batch 1 is launch-bound: the fastest plan (fewer convs) is faster.
    assert plan.measured_speedup > 1.0, res.log
    assert sum(n.op_type == "Conv" for n in res.model.graph.node) < sum(
        n.op_type == "Conv" for n in model.graph.node
    )
