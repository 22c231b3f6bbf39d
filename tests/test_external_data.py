"""External data outside the model's folder: Polygraphy's `--external-data-dir` spelling.

A three-conv model is saved with its weights in `w.bin`, which is then moved to another
folder. Without the flag every command fails with one error line naming the file and the
folder searched; with it (any of its three spellings) they work. An output path equal to the
data file is refused, and no input file is ever modified.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper
from test_cli_errors import set_location

import onnxmerge.api
from onnxmerge import MergeConvs, api
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import load_model
from onnxmerge.outputs import _external_files

DATA = "w.bin"


def three_convs() -> onnx.ModelProto:
    """x (1, 3, 8, 8) -> Conv 3x3 -> Conv 1x1 -> Relu -> Conv 3x3 -> y (1, 4, 8, 8).

    The first two convs form an activation-free run that `fuse` merges exactly. The hidden
    width (64) makes the fastest plan (one 5x5 conv, 3 -> 4 channels) a clear win on any
    machine: with 4 hidden channels it measured 0.91x once, and `--speedup max` failed.
    """
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((64, 3, 3, 3)),
        "b1": rng.standard_normal(64),
        "w2": rng.standard_normal((64, 64, 1, 1)) / 8,
        "w3": rng.standard_normal((4, 64, 3, 3)) / 8,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="conv2"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "three_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def moved(tmp_path) -> SimpleNamespace:
    """work/models/model.onnx whose external data lies in work/data/w.bin; work/out is empty."""
    work = tmp_path / "work"
    models, data, out = work / "models", work / "data", work / "out"
    for d in (models, data, out):
        d.mkdir(parents=True)
    model = models / "model.onnx"
    onnx.save_model(
        three_convs(),
        str(model),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA,
        size_threshold=0,
    )
    (models / DATA).rename(data / DATA)
    return SimpleNamespace(work=work, model=model, data=data, out=out)


def assert_one_error_line(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.rc == 2, (r.rc, r.stdout, r.stderr)
    assert len(r.stderr_lines) == 1, r.stderr
    assert r.stderr_lines[0].startswith("onnxmerge: error:"), r.stderr


def compress_args(m: SimpleNamespace, output: Path, *extra) -> list:
    cache = m.work.parent / "cache"
    return [m.model, output, "--speedup", "max", "--no-calibrate", "--prune", "depth",
            "--cache", cache, *extra]  # fmt: skip


def reference_output(m: SimpleNamespace, feed: np.ndarray) -> np.ndarray:
    """The original model's output, its weights read from the data folder by onnx itself."""
    proto = onnx.load(str(m.model), load_external_data=False)
    external_data_helper.load_external_data_for_model(proto, str(m.data))
    return ort_run(proto, feed)


def ort_run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": feed})[0]


# ------------------------------------------------------------------ the CLI


def test_without_the_flag_every_command_fails_in_one_line(moved, run_cli, snapshot):
    m = moved
    before = snapshot(m.work)
    results = run_cli.many(
        [
            ["inspect", m.model],
            ["fuse", m.model, m.out / "fused.onnx"],
            compress_args(m, m.out / "merged.onnx"),
        ]
    )
    for r in results:
        assert_one_error_line(r)
        line = r.stderr_lines[0]
        assert f"external data file '{DATA}'" in line and "is missing" in line, line
        assert str(m.model.parent.resolve()) in line, line  # the folder searched
        assert "--external-data-dir" in line, line
    assert snapshot(m.work) == before  # inputs unchanged, nothing written


@pytest.mark.slow
def test_with_the_flag_every_command_works(moved, run_cli, snapshot):
    m = moved
    before = snapshot(m.work)
    fused, merged = m.out / "fused.onnx", m.out / "merged.onnx"
    inspect, fuse, compress = run_cli.many(
        [
            ["inspect", m.model, "--external-data-dir", m.data],
            ["fuse", m.model, fused, "--all", "--ext", m.data],
            compress_args(m, merged, "--load-external-data", m.data),
        ]
    )
    for r in (inspect, fuse, compress):
        assert r.rc == 0, r.stderr
        assert "Traceback" not in r.stderr
    assert "total: 1 chains, 3 convs" in inspect.stdout
    assert "merged 1 groups: 3 -> 2 Conv nodes" in fuse.stdout
    after = snapshot(m.work)
    written = {"out/fused.onnx", "out/merged.onnx", "out/merged.plan.json"}
    assert set(after) - set(before) == written
    assert {k: v for k, v in after.items() if k not in written} == before  # inputs unchanged
    # The weights really came from the data folder: the fused model computes the original.
    feed = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = reference_output(m, feed)
    np.testing.assert_allclose(ort_run(onnx.load(str(fused)), feed), ref, rtol=1e-4, atol=1e-4)
    out = onnx.load(str(merged))
    onnx.checker.check_model(out)
    assert ort_run(out, feed).shape == ref.shape


def test_output_path_equal_to_the_data_file_is_refused(moved, run_cli, snapshot):
    m = moved
    before = snapshot(m.work)
    target = m.data / DATA
    dotted = m.data / ".." / "data" / DATA
    results = run_cli.many(
        [
            ["fuse", m.model, target, "--external-data-dir", m.data],
            compress_args(m, dotted, "--ext", m.data),
        ]
    )
    # relative spellings, run inside the data folder
    results.append(run_cli("fuse", m.model, DATA, "--external-data-dir", ".", cwd=m.data))
    for r in results:
        assert_one_error_line(r)
        assert "external-data file; refusing to overwrite it" in r.stderr, r.stderr
    assert snapshot(m.work) == before  # the data file and the model are unchanged


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "absolute"])
def test_data_location_may_not_leave_the_data_folder(moved, location, run_cli, snapshot):
    m = moved
    secret = m.work / "secret.bin"
    shutil.copyfile(m.data / DATA, secret)  # the bytes exist, but outside the data folder
    set_location(m.model, str(secret) if location == "absolute" else location)
    before = snapshot(m.work)
    results = run_cli.many(
        [
            ["inspect", m.model, "--external-data-dir", m.data],
            ["fuse", m.model, m.out / "fused.onnx", "--external-data-dir", m.data],
        ]
    )
    for r in results:
        assert_one_error_line(r)
        assert f"leaves the external data folder {m.data.resolve()}" in r.stderr, r.stderr
    assert snapshot(m.work) == before


# ------------------------------------------------------------------ the Python API


def test_python_api_takes_the_folder(moved):
    m = moved
    with pytest.raises(OnnxMergeError, match=r"'w\.bin' .* is missing from .*models"):
        load_model(m.model)
    with pytest.raises(OnnxMergeError, match=r"is missing from .*out$"):
        load_model(m.model, external_data_dir=m.out)
    proto = load_model(m.model, external_data_dir=m.data)
    assert not any(external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert api.inspect(m.model, external_data_dir=str(m.data))["total"]["convs"] == 3
    with pytest.raises(OnnxMergeError, match="external-data file"):
        api.check_outputs(m.model, [m.data / DATA], m.data)
    api.check_outputs(m.model, [m.model.parent / DATA], m.data)  # not read with the flag: ok
    assert _external_files(m.model, m.data) == {(m.data / DATA).resolve()}
    assert _external_files(m.model) == {(m.model.parent / DATA).resolve()}


def test_merge_convs_reads_a_path_with_the_folder(moved, monkeypatch):
    m = moved
    seen = []

    def compress(model, speedup, **kwargs):
        seen.append((model, kwargs))
        model = onnxmerge.api.load(model, external_data_dir=kwargs.get("external_data_dir"))
        plan = SimpleNamespace(
            groups=[],
            measured_input_ms=2.0,
            measured_output_ms=1.0,
            backend="ort-cpu",
            measured_speedup=2.0,
            target_speedup=speedup,
        )
        return SimpleNamespace(model=model, plan=plan, summary=lambda: [])

    monkeypatch.setattr(onnxmerge.api, "compress", compress)
    out = MergeConvs(str(m.model), 1.5, external_data_dir=str(m.data))()
    assert seen[0] == (str(m.model), {"external_data_dir": str(m.data)})  # onnxmerge loads it
    feed = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(out, feed), reference_output(m, feed))


def test_polygraphy_run_passes_external_data_dir_on(moved, cli_env, tmp_path):
    names = [e.name for e in metadata.entry_points(group="polygraphy.run.plugins")]
    exe = Path(sys.executable).with_name("polygraphy")
    exe = str(exe) if exe.exists() else shutil.which("polygraphy")
    if "onnxmerge" not in names or exe is None:
        pytest.skip("the polygraphy plugin is registered by `pip install -e .`")
    script = tmp_path / "run.py"
    r = subprocess.run(
        [exe, "run", str(moved.model), "--onnxrt", "--onnxmerge", "--onnxmerge-speedup", "1.5"]
        + ["--external-data-dir", str(moved.data), "--gen-script", str(script)],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = script.read_text()
    merge = next(line for line in text.splitlines() if "MergeConvs(" in line)
    assert repr(str(moved.model)) in merge and f"external_data_dir={str(moved.data)!r}" in merge
