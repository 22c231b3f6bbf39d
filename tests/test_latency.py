"""Latency package: one-conv models, backends, the measurement loop and the on-disk table."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.errors import OnnxMergeError
from onnxmerge.latency import (
    Backend,
    LatencyTable,
    MeasurePolicy,
    Timing,
    additivity_error,
    compare_models,
    conv_model,
    get_backend,
    random_feed,
    time_model,
)
from onnxmerge.latency.table import REFERENCE
from onnxmerge.signature import ACTIVATIONS, ConvSignature

REPO = Path(__file__).resolve().parents[1]
# Short measurements: tests check behaviour, not precision.
QUICK = MeasurePolicy(warmup_runs=5, warmup_s=0.01, block_s=0.005, max_s=0.3)
ONE_SHOT = MeasurePolicy(
    warmup_runs=1, warmup_s=0.0, block_s=0.0, min_block=1, max_block=1, window=1, max_s=0.0
)


@pytest.fixture(scope="module", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory):
    """ORT writes under ~/.cache on first use and the table defaults there: keep both in tmp."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("ONNXMERGE_CACHE", str(home / "cache"))
        yield home


def sig(c_in: int = 8, c_out: int = 8, hw: int = 8, k: int = 3, **kw: Any) -> ConvSignature:
    p = k // 2
    return ConvSignature(c_in, c_out, (k, k), (1, 1), (p, p, p, p), 1, (hw, hw), **kw)


REFERENCE_BYTES = conv_model(REFERENCE).SerializeToString()


class CountingBackend(Backend):
    """Runs nothing; counts loads (but the load probe's, LatencyTable's REFERENCE conv), and
    can simulate Ctrl-C on the n-th load."""

    name = "counting"

    def __init__(self, threads: int = 1, interrupt_at: int | None = None, **common: Any):
        super().__init__(policy=ONE_SHOT, **common)
        self.threads, self.interrupt_at, self.loads = threads, interrupt_at, 0

    def _fingerprint_impl(self) -> dict[str, Any]:
        return {"threads": self.threads}

    def load(self, onnx_bytes: bytes) -> Any:
        probe = conv_model(REFERENCE, batch=self.batch, dtype=self.dtype).SerializeToString()
        if onnx_bytes == probe:
            return len(onnx_bytes)
        self.loads += 1
        if self.loads == self.interrupt_at:
            raise KeyboardInterrupt
        return len(onnx_bytes)

    def _run_once(self, prepared: Any) -> None:
        pass


def sigs(n: int) -> list[ConvSignature]:
    return [sig(c_out=4 + i) for i in range(n)]


# -- models -----------------------------------------------------------------------------------
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_conv_model_runs_in_ort(activation: str | None, residual: bool) -> None:
    s = ConvSignature(8, 12, (3, 5), (2, 1), (1, 2, 0, 2), 2, (11, 9), (1, 1), activation, residual)
    for opset in (13, 17, 20):
        model = conv_model(s, batch=2, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = random_feed(model)
        assert set(feed) == ({"x", "skip"} if residual else {"x"})
        (y,) = sess.run(None, feed)
        assert y.shape == (2, 12, *s.out_hw) and np.isfinite(y).all()


@st.composite
def signatures(draw: st.DrawFn) -> ConvSignature:
    c_in = draw(st.sampled_from([1, 3, 4, 8]))
    groups = draw(st.sampled_from([1, c_in]))
    c_out = groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = (draw(st.integers(11, 16)), draw(st.integers(11, 16)))
    return ConvSignature(
        c_in, c_out, k, (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        tuple(draw(st.integers(0, 3)) for _ in range(4)), groups, hw, d,
        draw(st.sampled_from([None, *ACTIVATIONS])), draw(st.booleans()),
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(signatures())
def test_conv_model_shapes_match_signature(s: ConvSignature) -> None:
    """ORT agrees with ConvSignature.out_hw; the torch executor (if present) agrees with ORT."""
    model = conv_model(s)
    feed = random_feed(model)
    (want,) = _ort_outputs(model, feed)
    assert want.shape == (1, s.out_channels, *s.out_hw)
    if _importable("torch"):
        backend = get_backend("torch")
        (got,) = backend.run(backend.load(model.SerializeToString()), feed)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_conv_model_float16_and_bad_signature() -> None:
    model = conv_model(sig(activation="silu"), dtype="float16")
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, random_feed(model))
    assert y.dtype == np.float16
    with pytest.raises(OnnxMergeError, match="groups"):
        conv_model(ConvSignature(6, 8, (3, 3), (1, 1), (1, 1, 1, 1), 4, (8, 8)))


def test_random_feed_needs_static_shapes() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    )
    with pytest.raises(OnnxMergeError, match="dynamic dimension 'N'"):
        random_feed(model)
    assert random_feed(model, shapes={"x": (2, 3, 4, 4)})["x"].shape == (2, 3, 4, 4)


# -- backends ---------------------------------------------------------------------------------
def test_unknown_backend_and_bad_option() -> None:
    with pytest.raises(OnnxMergeError, match="unknown backend 'nope'"):
        get_backend("nope")
    with pytest.raises(OnnxMergeError, match="bad option"):
        get_backend("ort-cpu", colour="blue")
    with pytest.raises(OnnxMergeError, match="fp16"):
        get_backend("ort-cpu", precision="fp16")


@pytest.mark.parametrize(("name", "module"), [("trt", "tensorrt"), ("torch", "torch")])
def test_missing_package_fails_with_one_line(monkeypatch, name: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(OnnxMergeError, match="pip install") as info:
        get_backend(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt", "trt"])
def test_gpu_backends_refuse_cleanly_here(name: str) -> None:
    if name.startswith("ort") and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    if name == "trt" and _importable("tensorrt"):
        pytest.skip("tensorrt is installed")
    with pytest.raises(OnnxMergeError, match="pip install") as info:
        get_backend(name)
    assert "\n" not in str(info.value)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_iobinding_path_on_cpu() -> None:
    """The GPU backends' IOBinding code, exercised with the CPU provider and CPU buffers."""
    from onnxmerge.latency.ort import OrtCudaBackend

    class CpuBound(OrtCudaBackend):
        name = "ort-cpu-iobinding"
        provider = "CPUExecutionProvider"
        io_device = "cpu"

        def _providers(self) -> list:
            return ["CPUExecutionProvider"]

    backend = CpuBound(policy=QUICK)
    model = conv_model(sig(activation="relu", residual=True))
    session = backend.load(model.SerializeToString())
    prepared = backend.prepare(session, random_feed(model))
    backend._run_once(prepared)
    (bound,) = prepared[1].copy_outputs_to_cpu()
    np.testing.assert_allclose(bound, _ort_outputs(model, random_feed(model))[0], rtol=1e-5)
    assert backend.measure(session, random_feed(model)).median_ms > 0


def test_ort_cpu_fingerprint_and_timing() -> None:
    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    fp = backend.fingerprint()
    assert fp["threads"] == 2 and fp["spin"] is False and fp["opt_level"] == "all"
    assert fp["onnxruntime"] == ort.__version__ and fp["batch"] == 1
    assert get_backend("ort-cpu", threads=1).fingerprint_hash() != backend.fingerprint_hash()
    t = time_model(conv_model(sig(activation="relu")), backend)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.repeats >= QUICK.window * 10


def test_bigger_conv_reads_slower_on_ort_cpu() -> None:
    """4x the MACs (2x channels in and out), measured interleaved."""
    backend = get_backend("ort-cpu", threads=2)
    small = conv_model(sig(32, 32, 28, activation="relu"))
    big = conv_model(sig(64, 64, 28, activation="relu"))
    t_small, t_big = compare_models(small, big, backend)
    assert t_big.median_ms / t_small.median_ms > 1.5, (t_small, t_big)


def test_time_model_from_path_with_shapes(tmp_path: Path) -> None:
    model = conv_model(sig())
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    backend = get_backend("ort-cpu", policy=QUICK)
    with pytest.raises(OnnxMergeError, match="dynamic"):
        time_model(path, backend)
    assert time_model(str(path), backend, shapes={"x": (3, 8, 8, 8)}).median_ms > 0
    with pytest.raises(OnnxMergeError, match="cannot read"):
        time_model(tmp_path / "missing.onnx", backend)


def test_additivity_error() -> None:
    assert additivity_error([1.0, 2.0, 1.0], 4.0) == 0.0
    assert additivity_error(5.0, 4.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        additivity_error(1.0, 0.0)


# -- table ------------------------------------------------------------------------------------
def test_table_miss_then_hit(tmp_path: Path) -> None:
    backend = CountingBackend()
    wanted = sigs(4) + sigs(4)[:2]  # duplicates are timed once
    first = LatencyTable(tmp_path, backend).measure_all(wanted, progress=False)
    assert backend.loads == 4 and list(first) == sigs(4)
    table = LatencyTable(tmp_path, backend)
    again = table.measure_all(wanted, progress=False)
    # The values may be rescaled by the reference conv's timing (which, on a backend that
    # runs nothing, is timer noise): what must hold is that nothing was measured again.
    assert backend.loads == 4 and list(again) == list(first)
    assert (table.stats.hits, table.stats.new) == (4, 0) and len(table) == 4
    assert table.get(sigs(4)[0]) == first[sigs(4)[0]] and table.get(sig(hw=99)) is None


def test_table_default_dir_and_file_path(tmp_path: Path, private_home: Path) -> None:
    assert LatencyTable(None, CountingBackend()).path == private_home / "cache" / "latency.sqlite"
    assert LatencyTable(tmp_path / "t.db", CountingBackend()).path == tmp_path / "t.db"


@pytest.mark.parametrize("change", [{"threads": 4}, {"batch": 2}, {"dtype": "float16"}])
def test_fingerprint_change_misses(tmp_path: Path, change: dict) -> None:
    LatencyTable(tmp_path, CountingBackend()).measure_all(sigs(3), progress=False)
    other = CountingBackend(**change)
    table = LatencyTable(tmp_path, other)
    table.measure_all(sigs(3), progress=False)
    assert other.loads == 3 and table.stats.new == 3
    assert len(table.fingerprints()) == 2


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    wanted = sigs(5)
    table = LatencyTable(tmp_path, CountingBackend(interrupt_at=3))
    with pytest.raises(KeyboardInterrupt):
        table.measure_all(wanted, progress=True)
    backend = CountingBackend()
    resumed = LatencyTable(tmp_path, backend)
    assert [resumed.get(s) is not None for s in wanted] == [True, True, False, False, False]
    resumed.measure_all(wanted, progress=False)
    assert backend.loads == 3 and (resumed.stats.hits, resumed.stats.new) == (2, 3)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from onnxmerge.latency import Backend, LatencyTable, MeasurePolicy
    from onnxmerge.signature import ConvSignature

    class Slow(Backend):
        name = "counting"
        def __init__(self):
            super().__init__(policy=MeasurePolicy(warmup_runs=1, warmup_s=0, block_s=0,
                             min_block=1, max_block=1, window=1, max_s=0))
        def _fingerprint_impl(self):
            return {"threads": 1}
        def load(self, data):
            time.sleep(float(sys.argv[4]))
            return data
        def _run_once(self, prepared):
            pass

    lo, hi = int(sys.argv[2]), int(sys.argv[3])
    sigs = [ConvSignature(8, 4 + i, (3, 3), (1, 1), (1, 1, 1, 1), 1, (8, 8)) for i in range(lo, hi)]
    LatencyTable(sys.argv[1], Slow()).measure_all(sigs, progress=False)
    """
)


def _writer(db: Path, lo: int, hi: int, delay: float, home: Path) -> subprocess.Popen:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _WRITER, str(db), str(lo), str(hi), str(delay)]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)


def test_concurrent_writers_do_not_corrupt(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    procs = [_writer(db, 0, 40, 0.002, tmp_path), _writer(db, 20, 60, 0.002, tmp_path)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM latency").fetchone()[0] == 60
    conn.close()
    backend = CountingBackend()
    LatencyTable(db, backend).measure_all(sigs(60), progress=False)
    assert backend.loads == 0


def _rows(db: Path) -> int:
    """Rows in the table so far (0 while the writer has not created it yet)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM latency").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet
        return 0
    finally:
        conn.close()


def test_killed_writer_leaves_a_readable_table(tmp_path: Path) -> None:
    db = tmp_path / "killed.sqlite"
    proc = _writer(db, 0, 1000, 0.01, tmp_path)
    deadline = time.monotonic() + 30
    done = 0
    while done < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
        done = _rows(db)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert done >= 5
    backend = CountingBackend()
    table = LatencyTable(db, backend)
    kept = len(table)
    assert kept >= 5 and sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    table.measure_all(sigs(kept + 2), progress=False)
    assert backend.loads == 2


def test_table_with_real_ort_cpu(tmp_path: Path, monkeypatch) -> None:
    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    wanted = [sig(4, 4, 6, activation="relu"), sig(4, 8, 6, residual=True)]
    first = LatencyTable(tmp_path, backend).measure_all(wanted, progress=False)
    assert all(ms > 0 for ms in first.values())
    loads: list[bytes] = []
    real_load = backend.load

    def load(data: bytes):
        loads.append(data)
        return real_load(data)

    monkeypatch.setattr(backend, "load", load)
    table = LatencyTable(tmp_path, backend)
    again = table.measure_all(wanted, progress=False)
    assert loads == [REFERENCE_BYTES]  # only the load probe is timed again
    for s in wanted:  # the same numbers, unless the load moved (then rescaled alike)
        assert again[s] / first[s] == pytest.approx(again[wanted[0]] / first[wanted[0]])
    assert table.get_timing(wanted[0]).repeats > 0


class BoundaryBackend(CountingBackend):
    """Runs nothing, but reports `boundary` ms of layout conversions for every model."""

    name = "boundary"

    def __init__(self, boundary: float, **common: Any):
        super().__init__(**common)
        self.boundary = boundary

    def boundary_ms(self, onnx_bytes: bytes, feed: dict) -> float:
        return self.boundary


def test_in_network_latency_leaves_out_boundaries_and_overhead(tmp_path: Path, monkeypatch):
    """measure_all(in_network=True) is each conv's time alone less its boundary conversions
    (stored per row, so a warm run gets the same) and the OVERHEAD model's in-network time,
    never below 5% of its time alone; a cache from before the boundary column migrates."""
    from onnxmerge.latency import table as table_mod

    ms_of = {REFERENCE.key(): 1.0, table_mod.OVERHEAD.key(): 0.05}
    wanted = [sig(8, 8, 8), sig(16, 16, 8), sig(4, 4, 4)]
    ms_of.update({wanted[0].key(): 0.5, wanted[1].key(): 1.5, wanted[2].key(): 0.021})

    def measure(self, s, times=1, boundary=False):  # a backend whose convs take `ms_of`
        return Timing(ms_of[s.key()], ms_of[s.key()], ms_of[s.key()], 1,
                      boundary_ms=0.02 if boundary else 0.0)  # fmt: skip

    monkeypatch.setattr(table_mod.LatencyTable, "measure", measure)
    backend = BoundaryBackend(0.02)
    alone = LatencyTable(tmp_path, backend).measure_all(wanted, progress=False)
    assert [alone[s] for s in wanted] == pytest.approx([0.5, 1.5, 0.021])
    inside = LatencyTable(tmp_path, backend).measure_all(wanted, progress=False, in_network=True)
    base = 0.05 - 0.02  # OVERHEAD's own time inside a network
    expected = [0.5 - 0.02 - base, 1.5 - 0.02 - base, 0.05 * 0.021]  # the last: the 5% floor
    assert [inside[s] for s in wanted] == pytest.approx(expected)
    with sqlite3.connect(tmp_path / "latency.sqlite") as conn:  # a cache from before the column
        conn.execute("ALTER TABLE latency DROP COLUMN boundary_ms")
    old = LatencyTable(tmp_path, backend)
    assert old.measure_all(wanted, progress=False) == pytest.approx(alone)  # rows kept, as 0
    assert old.get_timing(wanted[0]).boundary_ms == 0.0


def test_ort_cpu_boundary_is_the_reorders_it_adds(tmp_path: Path) -> None:
    """ORT's boundary time is its NCHWc reorders: > 0 and below the model's time exactly when
    its optimized one-conv model has ReorderInput/ReorderOutput nodes (x86 with the NCHWc
    transformer), else 0."""
    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = conv_model(sig(32, 32, 28, activation="relu"))
    so = backend.session_options()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    timing = LatencyTable(tmp_path, backend).measure(
        sig(32, 32, 28, activation="relu"), boundary=True
    )
    if {"ReorderInput", "ReorderOutput"} & ops:
        assert 0 < timing.boundary_ms < timing.median_ms
    else:
        assert timing.boundary_ms == 0.0


# -- torch ------------------------------------------------------------------------------------
def _ort_outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return get_backend("ort-cpu").run(get_backend("ort-cpu").load(model.SerializeToString()), feed)


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_torch_executor_matches_ort_on_one_conv(activation: str | None) -> None:
    pytest.importorskip("torch")
    backend = get_backend("torch", policy=QUICK)
    for residual in (False, True):
        s = ConvSignature(
            8, 12, (3, 5), (2, 1), (1, 2, 0, 2), 2, (11, 9), (1, 1), activation, residual
        )
        for opset in (13, 17, 20):
            model = conv_model(s, opset=opset)
            feed = random_feed(model)
            (got,) = backend.run(backend.load(model.SerializeToString()), feed)
            np.testing.assert_allclose(got, _ort_outputs(model, feed)[0], rtol=1e-4, atol=1e-5)
    assert time_model(model, backend).median_ms > 0


def _mini_cnn() -> onnx.ModelProto:
    """A small CNN using the non-conv ops whole-model timing needs."""
    rng = np.random.default_rng(1)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
        "bn_s": rng.random(8) + 0.5, "bn_b": rng.standard_normal(8),
        "bn_m": rng.standard_normal(8), "bn_v": rng.random(8) + 0.5,
        "w2": rng.standard_normal((8, 8, 1, 1)), "two": np.array(2.0), "half": np.array(0.5),
        "fc": rng.standard_normal((10, 16)), "fcb": rng.standard_normal(10),
        "mm": rng.standard_normal((10, 4)),
    }  # fmt: skip
    ints = {
        "pads": [0, 0, 1, 1, 0, 0, 1, 1], "sl_s": [1], "sl_e": [15], "sl_a": [2],
        "split": [4, 4], "shape": [1, -1], "scales": [1.0, 1.0, 2.0, 2.0], "axes": [2, 3],
    }  # fmt: skip
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    for k, v in ints.items():
        dtype = np.float32 if k == "scales" else np.int64
        initializers.append(numpy_helper.from_array(np.asarray(v, dtype), k))
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        n("Relu", ["bn"], ["r1"]),
        n("MaxPool", ["r1"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Pad", ["mp", "pads"], ["pd"]),
        n("Slice", ["pd", "sl_s", "sl_e", "sl_a"], ["sl"]),
        n("Split", ["sl", "split"], ["s1", "s2"], axis=1),
        n("Sub", ["s1", "s2"], ["sub"]),
        n("Div", ["sub", "two"], ["dv"]),
        n("Concat", ["dv", "s2"], ["cat"], axis=1),
        n("Conv", ["cat", "w2"], ["c2"]),
        n("AveragePool", ["c2"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Resize", ["ap", "", "scales"], ["rs"], mode="nearest"),
        n("Mul", ["rs", "half"], ["mu"]),
        n("GlobalAveragePool", ["mu"], ["gap"]),
        n("ReduceMean", ["mu", "axes"], ["rm"], keepdims=1),
        n("Concat", ["gap", "rm"], ["both"], axis=1),
        n("Reshape", ["both", "shape"], ["flat"]),
        n("Gemm", ["flat", "fc", "fcb"], ["fcy"], transB=1),
        n("MatMul", ["fcy", "mm"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mini",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_torch_executor_matches_ort_on_a_whole_cnn() -> None:
    pytest.importorskip("torch")
    model = _mini_cnn()
    onnx.checker.check_model(model, full_check=True)
    backend = get_backend("torch", policy=QUICK)
    feed = random_feed(model)
    (got,) = backend.run(backend.load(model.SerializeToString()), feed)
    np.testing.assert_allclose(got, _ort_outputs(model, feed)[0], rtol=1e-4, atol=1e-4)
    assert isinstance(time_model(model, backend), Timing)


def test_torch_executor_builds_yolo_anchor_grids_like_ort() -> None:
    """Shape -> Gather -> Cast -> Range, Expand and ConstantOfShape: YOLOv8's anchor grid,
    built from the feature map's own size (ultralytics exports)."""
    pytest.importorskip("torch")
    n = helper.make_node
    c = lambda name, v, dt=np.int64: numpy_helper.from_array(np.asarray(v, dt), name)  # noqa: E731
    nodes = [
        n("Shape", ["x"], ["shp"]),
        n("Gather", ["shp", "i3"], ["w"], axis=0),
        n("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        n("Range", ["zero", "wf", "one"], ["xs"]),
        n("Add", ["xs", "half"], ["xc"]),
        n("Unsqueeze", ["xc", "ax0"], ["row"]),
        n("Expand", ["row", "eshape"], ["grid"]),
        n(
            "ConstantOfShape",
            ["cshape"],
            ["fill"],
            value=numpy_helper.from_array(np.array([2.5], np.float32)),
        ),
        n("Mul", ["grid", "fill"], ["g2"]),
        n("ReduceMean", ["x", "ax23"], ["m"], keepdims=0),
        n("MatMul", ["m", "g2"], ["y"]),
    ]
    inits = [c("i3", 3), c("zero", 0.0, np.float32), c("one", 1.0, np.float32),
             c("half", 0.5, np.float32), c("ax0", [0]), c("eshape", [4, 1]), c("cshape", [4, 8]),
             c("ax23", [2, 3])]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    backend = get_backend("torch", policy=QUICK)
    feed = random_feed(model)
    (got,) = backend.run(backend.load(model.SerializeToString()), feed)
    np.testing.assert_allclose(got, _ort_outputs(model, feed)[0], rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 4), stride=st.integers(1, 3), dil=st.integers(1, 2),
    groups=st.sampled_from([1, 2]), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    data=st.data(),
)  # fmt: skip
def test_torch_conv_transpose_matches_ort(k, stride, dil, groups, pads, data) -> None:
    """ConvTranspose (a UNet's upsampler; distillation refused it) against ONNX Runtime over
    random kernels, strides, dilations, groups, uneven pads and output_padding."""
    pytest.importorskip("torch")
    out_pad = data.draw(st.lists(st.integers(0, stride - 1), min_size=2, max_size=2))
    pads = [min(p, dil * (k - 1)) for p in pads]  # keeps the output non-empty
    rng = np.random.default_rng(k * 100 + stride)
    w = numpy_helper.from_array(rng.standard_normal((4, 6 // groups, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[stride, stride],
                            pads=pads, dilations=[dil, dil], group=groups,
                            output_padding=out_pad)  # fmt: skip
    graph = helper.make_graph(
        [node], "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, b],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    backend = get_backend("torch", policy=QUICK)
    feed = random_feed(model)
    (got,) = backend.run(backend.load(model.SerializeToString()), feed)
    (want,) = _ort_outputs(model, feed)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_unsupported_op_is_named() -> None:
    pytest.importorskip("torch")
    model = conv_model(sig())
    model.graph.node[0].op_type = "LRN"
    with pytest.raises(OnnxMergeError, match="LRN"):
        get_backend("torch").load(model.SerializeToString())


# -- GPU (conftest skips these without CUDA) -------------------------------------------------
@pytest.mark.gpu
def test_torch_cuda_matches_cpu(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 as fp32, not TF32
    model = conv_model(sig(16, 16, 28, activation="hardswish", residual=True))
    feed = random_feed(model)
    cpu, gpu = get_backend("torch"), get_backend("torch", device="cuda", policy=QUICK)
    (want,) = cpu.run(cpu.load(model.SerializeToString()), feed)
    (got,) = gpu.run(gpu.load(model.SerializeToString()), feed)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert time_model(model, gpu).median_ms > 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt", "trt"])
def test_gpu_backend_times_a_conv(name: str, tmp_path: Path) -> None:
    if name.startswith("ort") and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no onnxruntime-gpu")
    if name == "trt" and not _importable("tensorrt"):
        pytest.skip("no tensorrt")
    options = {"cache_dir": tmp_path} if name == "ort-trt" else {}
    if name == "trt":
        options = {"timing_cache": tmp_path / "tc.cache"}
    backend = get_backend(name, policy=QUICK, **options)
    table = LatencyTable(tmp_path, backend)
    ms = table.measure_all([sig(32, 32, 28, activation="relu")], progress=False)
    assert all(v > 0 for v in ms.values())


def test_network_latency_is_cached_as_a_ratio_to_its_table_time(tmp_path: Path) -> None:
    """A whole network's time is measured once, then cached as its ratio to the table time of
    its convs: a later table (say, rescaled for load) scales it alike; the budget search's
    interleaved measurement replaces the ratio; another shape or model is measured anew."""
    from onnxmerge import zoo

    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = zoo.resnet(18, width=0.25, size=32)
    shapes = {model.graph.input[0].name: (1, 3, 32, 32)}
    with LatencyTable(tmp_path, backend) as table:
        ms, cached = table.network_ms(model, shapes, 2.0, "depth")
        assert ms > 0 and not cached
        again, cached = table.network_ms(model, shapes, 4.0, "depth")
        assert cached and again == pytest.approx(2 * ms)
        table.put_network(model, shapes, 2.0, "depth", 3.0)
        assert table.network_ms(model, shapes, 1.0, "depth") == (pytest.approx(1.5), True)
        assert not table.network_ms(model, shapes, 1.0, "width")[1]  # keyed by `what` too
        other = zoo.resnet(18, width=0.25, size=16)
        name = other.graph.input[0].name
        assert not table.network_ms(other, {name: (1, 3, 16, 16)}, 1.0, "depth")[1]
        # A digest given (Analysis.sha256) keys the model instead of its bytes: the same
        # digest finds the row whatever proto is passed; the bytes' own key is another row.
        from onnxmerge.analysis import source_digest

        table.put_network(model, shapes, 1.0, "depth", 5.0, digest="d1")
        assert table.network_ms(other, shapes, 2.0, "depth", digest="d1") == (10.0, True)
        digest = source_digest(model)
        assert table.network_ms(other, shapes, 1.0, "depth", digest=digest) == (
            pytest.approx(1.5),
            True,
        )


def test_an_input_networks_cached_time_is_the_median_of_its_last_runs(tmp_path: Path) -> None:
    """One run timed under load (10x) does not move the time later runs start from; the
    pool keeps the last POOLED runs, so a lasting change wins once it is most of them; a
    run's later measurement replaces its earlier one (the splits of `both` each measure the
    input); unpooled puts (a plan's interleaved pair) replace the ratio as before."""
    from onnxmerge import zoo
    from onnxmerge.latency.table import POOLED

    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = zoo.resnet(18, width=0.25, size=32)
    shapes = {model.graph.input[0].name: (1, 3, 32, 32)}

    runs = iter(range(100))

    def put(ms: float, new_run: bool = True) -> float:
        table.run = f"run {next(runs)}" if new_run else table.run
        table.put_network(model, shapes, 1.0, "width", ms, digest="d", pooled=True)
        got, cached = table.network_ms(model, shapes, 1.0, "width", digest="d")
        assert cached
        return got

    with LatencyTable(tmp_path, backend) as table:
        assert put(2.0) == 2.0  # alone: itself
        assert put(2.2) == pytest.approx(2.1)
        assert put(20.0) == pytest.approx(2.2)  # the loaded run: outvoted
        assert put(2.0) == pytest.approx(2.1)
        assert put(2.4, new_run=False) == pytest.approx(2.3)  # the run's 2.0 replaced
        assert [put(3.0) for _ in range(POOLED)][-1] == pytest.approx(3.0)  # a lasting change
    with LatencyTable(tmp_path, backend) as table:  # the pool outlives the connection
        assert put(30.0) == pytest.approx(3.0)
        table.put_network(model, shapes, 1.0, "width", 7.0, digest="d")
        assert table.network_ms(model, shapes, 1.0, "width", digest="d") == (7.0, True)


def test_a_plan_pair_is_measured_once_then_cached_as_ratios(tmp_path: Path) -> None:
    """LatencyTable.compare: the input and a plan are measured interleaved once, then come
    from the cache under (digest, what), scaled by a later `scale_ms`; `fresh` measures again
    and replaces the pair; no digest, no cache."""
    from onnxmerge import zoo

    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = zoo.resnet(18, width=0.25, size=32)
    small = zoo.resnet(18, width=0.125, size=32)
    shapes = {model.graph.input[0].name: (1, 3, 32, 32)}
    with LatencyTable(tmp_path, backend) as table:
        a, b, cached = table.compare(model, small, shapes, "d", "plan [1]", 2.0)
        assert a > 0 and b > 0 and not cached
        a2, b2, cached = table.compare(model, small, shapes, "d", "plan [1]", 4.0)
        assert cached and (a2, b2) == (pytest.approx(2 * a), pytest.approx(2 * b))
        assert not table.compare(model, small, shapes, "d", "plan [2]", 2.0)[2]
        assert not table.compare(model, small, shapes, "e", "plan [1]", 2.0)[2]
        a3, b3, cached = table.compare(model, small, shapes, "d", "plan [1]", 2.0, fresh=True)
        assert not cached
        assert table.compare(model, small, shapes, "d", "plan [1]", 2.0) == (
            pytest.approx(a3),
            pytest.approx(b3),
            True,
        )
        assert not table.compare(model, small, shapes, None, "plan [1]", 2.0)[2]
        assert not table.compare(model, small, shapes, None, "plan [1]", 2.0)[2]


def test_a_plan_pair_taken_under_another_load_is_measured_again(tmp_path: Path) -> None:
    """A cached pair is reused only while the reference conv runs within LOAD_SHIFT of its
    time beside the pair; a run under another load measures the pair again and stores it
    with its own reference. A pair from a cache older than the reference column (the column
    is added when the cache opens): measured again."""
    from onnxmerge import zoo
    from onnxmerge.latency.table import LOAD_SHIFT

    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = zoo.resnet(18, width=0.25, size=32)
    small = zoo.resnet(18, width=0.125, size=32)
    shapes = {model.graph.input[0].name: (1, 3, 32, 32)}
    args = (model, small, shapes, "d", "plan [1]", 2.0)
    with LatencyTable(tmp_path, backend) as table:
        assert not table.compare(*args)[2]
        ref = table.reference_ms()
    for shift, cached in [(1 + LOAD_SHIFT / 2, True), (1 - LOAD_SHIFT / 2, True),
                          (1 + 2 * LOAD_SHIFT, False), (1 + 2 * LOAD_SHIFT, True)]:  # fmt: skip
        with LatencyTable(tmp_path, backend) as table:
            table._ref_ms = ref * shift  # today's load, as the run's reference reads it
            assert table.compare(*args)[2] is cached, shift  # measured again: stored at 1.3
    with LatencyTable(tmp_path, backend) as table:  # back to a version-2 cache's layout
        with table._db() as conn:
            conn.execute("ALTER TABLE networks DROP COLUMN ref_ms")
    with LatencyTable(tmp_path, backend) as table:
        table._ref_ms = ref
        assert not table.compare(*args)[2]
        assert table.compare(*args)[2]


def test_time_apart_takes_a_dynamic_batch_as_1_and_reports_failures_in_one_line() -> None:
    """api.time_apart (finetune's timing): no shapes, or the CLI's {} for no --input-shape,
    time a dynamic batch at 1 (finetune trained, then failed to time every dynamic-batch
    model); a model it cannot time is one OnnxMergeError line without the child's class."""
    from onnxmerge import zoo
    from onnxmerge.api import time_apart
    from onnxmerge.latency.apart import measure_apart

    model = zoo.resnet(18, width=0.125, size=32)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for shapes in (None, {}):
        ms = time_apart([model, model], shapes)
        assert len(ms) == 2 and all(m > 0 for m in ms)
    with pytest.raises(OnnxMergeError) as info:  # no shapes at all: the child refuses
        measure_apart([model])
    message = str(info.value)
    assert "fresh process failed: input" in message and "dynamic dimension 'batch'" in message
    assert "Error:" not in message and "\n" not in message


def test_a_measured_fraction_is_cached_like_a_time(tmp_path: Path) -> None:
    """network_ms(measure=...): what `measure` returns is cached under `what` and the next
    call reads it without measuring (the input's other-ops fraction, a profile costing
    seconds, is taken once per cache); None (a backend without a profiler) is not cached."""
    from onnxmerge import zoo

    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    model = zoo.resnet(18, width=0.25, size=32)
    shapes = {model.graph.input[0].name: (1, 3, 32, 32)}
    calls: list[float | None] = []

    def measure(value: float | None):
        return lambda: calls.append(value) or value

    with LatencyTable(tmp_path, backend) as table:
        assert table.network_ms(model, shapes, 1.0, "x", measure=measure(0.3)) == (0.3, False)
        got = table.network_ms(model, shapes, 1.0, "x", measure=measure(0.9))
        assert got == (pytest.approx(0.3), True)
        for _ in range(2):
            assert table.network_ms(model, shapes, 1.0, "y", measure=measure(None)) == (
                None,
                False,
            )
    assert calls == [0.3, None, None]


def test_the_input_is_profiled_once_per_cache(tmp_path: Path, monkeypatch) -> None:
    """build_problem for the depth kind profiles the input network (the share of its time
    outside convs) on a cold cache and reads it back on a warm one: a warm run used to pay
    the profile every time."""
    from graphs import three_conv_chain

    from onnxmerge.analysis import analyze
    from onnxmerge.kinds.depth.kind import DepthKind
    from onnxmerge.latency.ort import OrtCpuBackend
    from onnxmerge.problem import build_problem, scoring_for

    profiled: list[float | None] = []
    real = OrtCpuBackend.other_fraction

    def counted(self, onnx_bytes, feed):
        profiled.append(real(self, onnx_bytes, feed))
        return profiled[-1]

    monkeypatch.setattr(OrtCpuBackend, "other_fraction", counted)
    analysis = analyze(three_conv_chain())
    calib_set, scoring = scoring_for(analysis, None, 2, calibrate=False, progress=False)
    backend = get_backend("ort-cpu", threads=2, policy=QUICK)
    logs = []
    for _ in range(2):
        built = build_problem(analysis, DepthKind(), backend, calib_set, scoring, tmp_path, False)
        logs.append(next(line for line in built.log if line.startswith("input ")))
    assert len(profiled) == 1 and profiled[0] is not None and 0 < profiled[0] < 1
    assert "(cache)" not in logs[0] and "(cache)" in logs[1]


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pads=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    groups=st.sampled_from([1, 2, 4]),
    length=st.integers(12, 40),
)
def test_a_1d_conv_is_read_and_timed_as_itself(k, stride, dilation, pads, groups, length) -> None:
    """A 1-D Conv (audio, sequence CNNs) is read in the 2-D form it equals with a height of 1:
    read_linear_proto's lifted conv, applied in float64 numpy to the height-1 input, gives
    ONNX Runtime's 1-D output; conv1d_spec's rank-1 signature keys apart from that 2-D conv
    and its timing model is a 1-D Conv with the original's output shape."""
    import onnx_graphsurgeon as gs
    from reference import ref_lc

    from onnxmerge.graph.conv import conv1d_spec, read_linear_proto

    rng = np.random.default_rng(k * 100 + length)
    c_in, c_out = 8, 4
    w = rng.standard_normal((c_out, c_in // groups, k)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", kernel_shape=[k],
                            strides=[stride], dilations=[dilation], pads=list(pads),
                            group=groups)  # fmt: skip
    out_len = (length + sum(pads) - dilation * (k - 1) - 1) // stride + 1
    io = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph([node], "g", [io("x", TensorProto.FLOAT, [1, c_in, length])],
                              [io("y", TensorProto.FLOAT, [1, c_out, out_len])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, c_in, length)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    lifted = read_linear_proto(node, {t.name: t for t in graph.initializer})
    want = ref_lc(x[0, :, None].astype(np.float64), lifted)[:, 0]  # (C, 1, L) in
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)

    spec = conv1d_spec(next(n for n in gs.import_onnx(model).nodes if n.op == "Conv"))
    s = ConvSignature(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.pads,
                      spec.groups, spec.in_hw, spec.dilation, rank=1)  # fmt: skip
    assert s.out_hw == (1, out_len) and s.key() != replace(s, rank=2).key()
    timed = conv_model(s)
    conv = timed.graph.node[0]
    assert conv.op_type == "Conv" and len(timed.graph.input[0].type.tensor_type.shape.dim) == 3
    y = ort.InferenceSession(timed.SerializeToString()).run(None, {"x": x})[0]
    assert y.shape == got.shape


def test_a_1d_signature_has_height_one() -> None:
    with pytest.raises(ValueError, match="height 1"):
        ConvSignature(4, 4, (3, 3), (1, 1), (1, 1, 1, 1), 1, (8, 8), rank=1)
    with pytest.raises(ValueError, match="rank"):
        ConvSignature(4, 4, (1, 3), (1, 1), (0, 1, 0, 1), 1, (1, 8), rank=3)


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 1),
    output_padding=st.integers(0, 2),
    depthwise=st.booleans(),
    hw=st.integers(3, 9),
)
def test_a_conv_transpose_is_read_and_timed_as_itself(
    k, stride, dilation, pad, output_padding, depthwise, hw
) -> None:
    """A 2-D ConvTranspose (weight C_in x C_out/group x k x k) read by transpose_spec gives a
    signature whose output size is ONNX Runtime's, whose timing model is a ConvTranspose of
    the same geometry and output shape, and whose key differs from the Conv's it resembles."""
    import onnx_graphsurgeon as gs

    from onnxmerge.graph.conv import transpose_spec

    assume(output_padding < stride)  # what ONNX Runtime accepts
    c_in, c_out = (8, 8) if depthwise else (8, 4)
    group = 8 if depthwise else 1
    rng = np.random.default_rng(k * 1000 + hw)
    w = rng.standard_normal((c_in, c_out // group, k, k)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", kernel_shape=[k, k],
                            strides=[stride] * 2, dilations=[dilation] * 2, pads=[pad] * 4,
                            output_padding=[output_padding] * 2, group=group)  # fmt: skip
    io = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [io("x", TensorProto.FLOAT, [1, c_in, hw, hw])],
                              [io("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0].shape
    spec, op = transpose_spec(
        next(n for n in gs.import_onnx(model).nodes if n.op == "ConvTranspose")
    )
    s = ConvSignature(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.pads,
                      spec.groups, spec.in_hw, spec.dilation, transpose=True,
                      output_padding=op)  # fmt: skip
    assert (spec.out_channels, *s.out_hw) == want[1:]
    assert s.key() != replace(s, transpose=False, output_padding=(0, 0)).key()
    timed = conv_model(s)
    assert timed.graph.node[0].op_type == "ConvTranspose"
    assert ort.InferenceSession(timed.SerializeToString()).run(None, {"x": x})[0].shape == want
