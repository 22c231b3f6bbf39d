"""benchmarks/gpu_check.py: the GPU run's code path on the CPU (--device cpu --quick), and its
step finder and report writer on made-up numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package)."""
    if "gpu_check" not in sys.modules:
        path = REPO / "benchmarks" / "gpu_check.py"
        spec = importlib.util.spec_from_file_location("gpu_check", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_find_steps_sees_a_staircase_not_a_slope() -> None:
    gc = _script()
    chans = list(range(8, 257, 8))
    stairs = [0.010 * (1 + (c - 1) // 64) for c in chans]  # flat, jumping after 64, 128, 192
    found = gc.find_steps(chans, stairs)
    assert [s[:2] for s in found["up"]] == [[64, 72], [128, 136], [192, 200]]
    assert found["align"] == 64 and found["down"] == []
    slope = [0.001 * c for c in chans]  # linear in channels: no step anywhere
    assert gc.find_steps(chans, slope) == {"up": [], "down": [], "align": None}
    dips = [0.02 if c % 32 else 0.01 for c in chans]  # multiples of 32 cheaper than neighbours
    found = gc.find_steps(chans, dips)
    assert gc.find_steps([8, 16], [1.0, 2.0])["up"] is None  # too few points to tell
    assert found["align"] == 32 and all(c0 % 32 == 0 for c0, _, _ in found["up"])
    assert found["down"]


def test_markdown_of_a_partial_report() -> None:
    gc = _script()
    md = gc.render_markdown(
        {
            "meta": {"device": "cuda"},
            "tables": [{"model": "m", "batch": 1, "dtype": "float16", "status": "running"}],
            "compress": [
                {
                    "model": "m",
                    "dtype": "float32",
                    "target": "1.5",
                    "status": "out of reach",
                    "note": "speedup 1.5 is out of reach on torch: ... | ...",
                },
            ],  # fmt: skip
            "staircase": [],
            "skipped": [{"section": "compress", "unit": "m float16", "why": "budget spent"}],
            "errors": [],
            "notes": [],
        }
    )
    assert "| m | 1 | float16 |" in md and "out of reach" in md and "budget spent" in md


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OUT", str(tmp_path / "device_out"))  # the device tool's folder
    out = tmp_path / "out"
    gc = _script()
    argv = ["--device", "cpu", "--quick", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert gc.main(argv) == 0
    md = (out / "gpu_check.md").read_text()
    data = json.loads((out / "gpu_check.json").read_text())
    for folder in (out, tmp_path / "device_out"):
        assert {p.name for p in folder.iterdir()} == {
            "gpu_check.md",
            "gpu_check.json",
            "gpu_check.log",
        }
    for heading in ("## 1. Latency tables", "## 2. compress", "## 3. Channel staircase"):
        assert heading in md
    assert data["errors"] == [] and data["skipped"] == []
    meta = data["meta"]
    assert meta["date"] and meta["device"] == "cpu" and meta["versions"]["torch"]
    assert meta["versions"]["onnxmerge_commit"]

    tables = data["tables"]  # resnet18, batch 1 and 2, float32 and float16
    assert {(t["batch"], t["dtype"]) for t in tables} == {
        (b, d) for b in (1, 2) for d in ("float32", "float16")
    }
    for t in tables:
        assert t["status"] == "ok", t
        assert t["signatures"] > 0 and t["cold_measured"] == t["signatures"] + 1  # + overhead
        assert t["warm_measured"] == 0 and t["cold_s"] > 0 and t["warm_s"] >= 0
        assert t["model_ms"] > 0 and t["table_sum_ms"] > 0

    (row,) = data["compress"]  # --quick: 1.2x only, float32
    assert row["target"] == "1.2" and row["tool_s"] > 0
    if row["status"] == "ok":
        assert row["measured_speedup"] > 0 and row["input_ms"] > 0 and row["output_ms"] > 0
        assert row["latency_new"] == 0  # the table was warm from section 1
    else:  # noisy CPU timings: a miss is reported, not raised
        assert row["status"] in ("out of reach", "not reached", "no faster plan"), row
        assert "speedup" in row["note"] or "plan" in row["note"]

    stairs = data["staircase"]
    assert len(stairs) == 8  # (1x1, 3x3) x batch (1, 2) x (float32, float16)
    for e in stairs:
        assert e["status"] == "ok" and e["points"]
        assert all(p["eager_ms"] > 0 and "kernel_ms" not in p for p in e["points"].values())
        assert "steps_eager" in e
    assert "1x1 conv, ms per output channel count" in md
