"""Whole-model latencies measured in a fresh process.

After PyTorch has trained in a process, its intra-op threads keep spinning for a while and
whatever ONNX Runtime times there is slowed unevenly: two equal networks read 1.04x vs 1.28x
in one such process (benchmarks/finetune.py, 2026-11-22). `measure_apart` saves the models to
a temporary folder and times them, interleaved, in a new Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from onnxmerge.errors import OnnxMergeError

_SCRIPT = """
import json, sys
from onnxmerge.latency import get_backend, measure_models
name, options, shapes, *paths = sys.argv[1:]
shapes = {k: tuple(v) for k, v in json.loads(shapes).items()} or None
backend = get_backend(name, **json.loads(options))
print(json.dumps([t.median_ms for t in measure_models(paths, backend, shapes)]))
"""


def measure_apart(
    models: Sequence[onnx.ModelProto],
    backend: str = "ort-cpu",
    backend_options: dict | None = None,
    shapes: dict[str, Sequence[int]] | None = None,
) -> list[float]:
    """Median latencies in ms of `models` on `backend`, measured interleaved in a fresh
    process (random inputs of `shapes`, or of the models' static input shapes).

    Raises OnnxMergeError with the child's last error line when it fails."""
    with tempfile.TemporaryDirectory(prefix="onnxmerge-time-") as tmp:
        paths = []
        for i, m in enumerate(models):
            paths.append(str(Path(tmp) / f"m{i}.onnx"))
            onnx.save(m, paths[-1])
        args = [backend, json.dumps(backend_options or {}), json.dumps(shapes or {}), *paths]
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True, env=env
        )
    if out.returncode:
        lines = out.stderr.strip().splitlines() or ["no output"]
        why = lines[-1].split("OnnxMergeError: ", 1)[-1]  # our own error: its message alone
        raise OnnxMergeError(f"timing in a fresh process failed: {why}")
    return [float(v) for v in json.loads(out.stdout.strip().splitlines()[-1])]
