"""onnxmerge in Polygraphy workflows: the MergeConvs loader and the `polygraphy run` plugin.

The real runs compress a quarter-width ResNet-18 at 32x32 on ort-cpu (a few seconds; both
share one latency cache) and skip the least-squares refit where compress() has one.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from polygraphy.backend.onnx import BytesFromOnnx, OnnxFromPath, SaveOnnx
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.exception import PolygraphyException

import onnxmerge.api
from onnxmerge import MergeConvs, zoo
from onnxmerge.polygraphy_loader import merge_convs

SPEEDUP = "max"  # always writes: a fixed target on a 0.2 ms model can miss by timing noise
FAST = (
    {"calibrate": False}
    if "calibrate" in inspect.signature(onnxmerge.api.compress).parameters
    else {}
)


def _convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("net") / "net.onnx"
    onnx.save(zoo.resnet(18, width=0.25, size=32), str(path))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# ------------------------------------------------------------------ the loader


@pytest.fixture
def fake_compress(monkeypatch):
    """Replace compress() with a recorder that returns its input model unchanged."""
    calls = []

    def compress(model, speedup, **kwargs):
        calls.append((model, speedup, kwargs))
        plan = SimpleNamespace(
            groups=[],
            measured_input_ms=2.0,
            measured_output_ms=1.0,
            backend=kwargs.get("backend", "ort-cpu"),
            measured_speedup=2.0,
            target_speedup=speedup,
        )
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        return SimpleNamespace(model=proto, plan=plan, summary=lambda: ["fake"])

    monkeypatch.setattr(onnxmerge.api, "compress", compress)
    return calls


def test_merge_convs_takes_a_path_proto_bytes_or_loader(net, fake_compress):
    proto = onnx.load(str(net))
    kwargs = {"backend": "trt", "method": "depth", "a_future_option": 3}
    for model in (str(net), net, proto, proto.SerializeToString(), OnnxFromPath(str(net))):
        out = MergeConvs(model, 1.5, **kwargs)()
        assert isinstance(out, onnx.ModelProto) and _convs(out) == _convs(proto)
    assert merge_convs(net, speedup=2.0, method="depth").graph.name == proto.graph.name
    seen = [(type(m).__name__, s, k) for m, s, k in fake_compress]
    assert seen[:2] == [("str", 1.5, kwargs), ("PosixPath", 1.5, kwargs)]  # onnxmerge loads paths
    assert all(t == "ModelProto" for t, _, _ in seen[2:5])  # bytes and loaders are resolved
    assert seen[5] == ("PosixPath", 2.0, {"method": "depth"})


def test_merge_convs_distills_from_the_original(net, fake_compress, monkeypatch, tmp_path):
    """distill=: the compressed result is trained toward the input model (the teacher) on the
    data given, ten minutes unless a budget is given; bad data fails before compressing."""
    calls = []
    monkeypatch.setattr(onnxmerge.api, "distill_result", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(onnxmerge.api, "check_data", lambda *a, **k: None)
    MergeConvs(str(net), 1.5, distill=["photos"], input_shapes={"input": (1, 3, 32, 32)})()
    ((args, kwargs),) = calls
    assert args[1:] == (str(net), ["photos"]) and args[0].plan.target_speedup == 1.5
    assert kwargs == {"input_shapes": {"input": (1, 3, 32, 32)}, "minutes": 10}
    MergeConvs(str(net), 1.5, distill=[], distill_options={"steps": 5, "lr": 1e-3})()
    assert calls[1][1] == {"steps": 5, "lr": 1e-3}
    monkeypatch.undo()
    with pytest.raises(PolygraphyException, match="onnxmerge: .*not found"):
        MergeConvs(str(net), 1.5, distill=[str(tmp_path / "missing")])()


def test_merge_convs_error_is_a_polygraphy_error(net):
    with pytest.raises(PolygraphyException, match="onnxmerge: speedup: must be above 1.0"):
        MergeConvs(OnnxFromPath(str(net)), speedup=1.0)()


@pytest.mark.slow
def test_merge_convs_composes_with_polygraphy_loaders(net, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # ONNX Runtime writes under ~/.cache
    saved = tmp_path / "merged.onnx"
    merged = SaveOnnx(
        MergeConvs(
            OnnxFromPath(str(net)),
            speedup=SPEEDUP,
            cache_dir=cache,
            progress=False,
            kind="depth",  # one stage: the default (both) is covered by test_summary
            **FAST,
        ),
        path=str(saved),
    )
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)}
    with OnnxrtRunner(SessionFromOnnx(BytesFromOnnx(merged))) as runner:
        out = runner.infer(feed)
    with OnnxrtRunner(SessionFromOnnx(str(net))) as runner:
        ref = runner.infer(feed)
    assert list(out) == list(ref)
    (name,) = out
    assert out[name].shape == ref[name].shape == (1, 1000)
    assert np.isfinite(out[name]).all()
    assert _convs(onnx.load(str(saved))) < _convs(onnx.load(str(net)))


# ------------------------------------------------------------------ `polygraphy run --onnxmerge`


def _polygraphy() -> str:
    names = [e.name for e in metadata.entry_points(group="polygraphy.run.plugins")]
    if "onnxmerge" not in names:
        pytest.skip("the polygraphy plugin is registered by `pip install -e .`")
    exe = Path(sys.executable).with_name("polygraphy")
    return str(exe) if exe.exists() else shutil.which("polygraphy") or pytest.skip("no polygraphy")


def _poly(env, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_polygraphy(), "run", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _fast_options() -> list[str]:
    return ["--onnxmerge-option", *(f"{k}={v}" for k, v in FAST.items())] if FAST else []


@pytest.mark.slow
def test_polygraphy_run_compares_original_and_compressed(net, cache, tmp_path, cli_env):
    saved = tmp_path / "merged.onnx"
    r = _poly(
        cli_env,
        net,
        "--onnxrt",
        "--onnxmerge",
        "--onnxmerge-speedup",
        SPEEDUP,
        "--onnxmerge-cache",
        cache,
        "--onnxmerge-save",
        saved,
        "--onnxmerge-prune",
        "depth",  # one stage (the cache is warm from the composition test); both: test_summary
        *_fast_options(),
        cwd=tmp_path,
    )
    log = r.stdout + r.stderr
    assert "Traceback" not in log, log
    assert "onnxrt-runner-N0" in log and "onnxmerge-onnxrt-runner" in log, log
    assert "vs. onnxmerge-onnxrt-runner" in log  # Polygraphy's accuracy comparison of the two
    assert "Error Metrics" in log and "Accuracy Summary" in log, log
    assert re.search(r"onnxmerge: (width: |depth: )?try 1:", log)  # MergeConvs logs compress's
    # Compression changes the outputs: the comparison reports it (and fails at 1e-5).
    assert r.returncode == (0 if "PASSED | Runtime" in log else 1), log
    assert _convs(onnx.load(str(saved))) < _convs(onnx.load(str(net)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--onnxmerge"], "--onnxmerge needs --onnxmerge-speedup"),
        (["--onnxmerge", "--onnxmerge-speedup", "0.9"], "must be above 1.0"),
        (["--onnxmerge-speedup", "2", "--onnxmerge", "--onnxmerge-option", "x=1"], "takes no x"),
    ],
)
def test_polygraphy_run_bad_onnxmerge_flags(net, tmp_path, cli_env, args, message):
    r = _poly(cli_env, net, "--onnxrt", *args, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stdout + r.stderr
    assert "Activating" not in r.stdout  # rejected before any runner ran


def _undefined_names(source: str) -> set[str]:
    tree = ast.parse(source)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    loads = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    return loads - defined


def test_polygraphy_run_prune_flag_reaches_compress(net, tmp_path, cli_env):
    script = tmp_path / "run.py"
    r = _poly(
        cli_env,
        net,
        "--onnxrt",
        "--onnxmerge",
        "--onnxmerge-speedup",
        "1.3",
        "--onnxmerge-prune",
        "width",
        "--onnxmerge-eval",
        "val",
        "val.npz",
        "--gen-script",
        script,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kind='width'" in script.read_text()
    assert "eval_data=['val', 'val.npz']" in script.read_text()


def test_polygraphy_run_distill_script(net, tmp_path, cli_env):
    """--onnxmerge-distill (none: the built-in photos) and its minutes reach MergeConvs;
    the minutes alone are refused."""
    script = tmp_path / "run.py"
    common = ("--onnxrt", "--onnxmerge", "--onnxmerge-speedup", "1.3")
    minutes = ("--onnxmerge-distill-minutes", "2")
    r = _poly(cli_env, net, *common, "--onnxmerge-distill", "photos", *minutes,
              "--gen-script", script, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    text = script.read_text()
    assert "distill=['photos']" in text and "distill_options={'minutes': 2.0}" in text
    r = _poly(cli_env, net, *common, "--onnxmerge-distill", "--gen-script", script, cwd=tmp_path)
    assert r.returncode == 0 and "distill=[]" in script.read_text()
    r = _poly(cli_env, net, *common, *minutes, "--gen-script", script, cwd=tmp_path)
    assert r.returncode != 0 and "needs --onnxmerge-distill" in r.stdout + r.stderr


@pytest.mark.parametrize("order", [["--trt", "--onnxmerge"], ["--onnxmerge", "--trt"]])
def test_polygraphy_run_trt_script(net, tmp_path, cli_env, order):
    """With --trt (no TensorRT needed to write the script): the compressed model is built
    into its own engine with the same TensorRT flags, and both runners' loaders are intact."""
    script = tmp_path / "run.py"
    r = _poly(
        cli_env,
        net,
        *order,
        "--onnxmerge-speedup",
        "1.3",
        "--fp16",
        "--input-shapes",
        "input:[1,3,32,32]",
        "--gen-script",
        script,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = script.read_text()
    assert "MergeConvs(" in text and "backend='trt'" in text
    assert "input_shapes={'input': (1, 3, 32, 32)}" in text
    assert "NetworkFromOnnxBytes(serialize_onnx" in text
    assert "name='onnxmerge-trt-runner'" in text and text.count("TrtRunner(") == 2
    assert text.count("fp16=True") == 2  # the same builder config for both engines
    assert _undefined_names(text) == set()


def test_polygraphy_run_trt(net, cache, tmp_path, cli_env):
    pytest.importorskip("tensorrt")
    r = _poly(
        cli_env,
        net,
        "--trt",
        "--onnxmerge",
        "--onnxmerge-speedup",
        SPEEDUP,
        "--onnxmerge-cache",
        cache,
        *_fast_options(),
        cwd=tmp_path,
    )
    log = r.stdout + r.stderr
    assert "Traceback" not in log, log
    assert "vs. onnxmerge-trt-runner" in log or "onnxmerge-trt-runner vs." in log, log
    assert "Accuracy Summary" in log, log
