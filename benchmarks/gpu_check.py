r"""GPU truth in one prepared command (issue 15): the `torch` backend on CUDA, measured.

Sections (each unit wrapped: an error is recorded with its text and the rest still runs):
  1. tables: LatencyTable.measure_all over compress()'s candidate signatures (LayerMerge,
     pruned variants included, max kernel 7) of zoo MobileNetV2 and ResNet-50 at 224, batch 1
     and 32, float32 and float16: candidates, distinct signatures, cold time (a fresh cache,
     every signature timed) and warm time (a second LatencyTable on the same cache, nothing
     timed), the whole input network's latency at that batch and dtype, and the sum of its
     chain convs in the table (per-call overhead subtracted, as compress does).
  2. compress: compress(model, 1.2 / 1.5 / max, backend="torch", backend_options={"device":
     ..., "dtype": ...}) at batch 1: measured speedup (input and output timed interleaved on
     the device: CUDA events, warm-up, medians), tool wall time and where it went (compress's
     log), merged groups. The latency table is warm from section 1; importance is scored by
     ONNX Runtime on the CPU (2 threads), cold for each model's first target, with
     --calib-count 4 (compress's default is 16): the zoo weights are random, so importance
     means nothing here, and 16 photos make ResNet-50's importance alone take minutes. A
     target out of reach is reported as such. Each model runs in a child process with a
     deadline, so a slow importance pass cannot eat the sections after it.
  3. staircase: latency against output channels of a 1x1 conv (256 in, 8..512 out, step 8)
     and a 3x3 conv (128 in, 8..256 out) at 56x56, batch 1 and 32, fp32 and fp16. "eager ms"
     is the backend's number for the one-conv model (what the latency table stores: the whole
     eager call, launch included; a shorter policy than the tables'); on CUDA "kernel ms" is
     the conv alone, 20 launches replayed in a CUDA graph (no launch gaps). Steps are rises
     above the local trend (more than 3x the median change between neighbours and 3% of the
     latency); "align" is the largest power of two (>= 8) that every step starts after: the
     input to width pruning's channel alignment. Points run coarse to fine (multiples of 64
     first), so a budget cut leaves every curve, only sparser.

Outputs: OUT/gpu_check.md (also printed at the end), OUT/gpu_check.json and OUT/gpu_check.log
(everything printed), rewritten after every unit, so a run stopped early keeps what it
measured; with $OUT set (the device tool) the three land there too. Versions (torch, CUDA,
cuDNN and its TF32 flag, GPU, driver, onnxruntime, onnxmerge commit) and the date head both.

Time: the whole list does not fit in 8 minutes (estimates for an H200 host from runs here:
ResNet-50's 67 signature models alone take 40-75 s of CPU to build, some 400 MB each; ~0.15-
0.4 s to time each signature; MobileNetV2 ~260 signatures a table), so units run by priority
and --budget-s (default 420 s) is checked before each unit and between chunks of a table:
  batch-1 fp32 tables -> staircase (at most 15% of the budget) -> compress fp32 (each model's
  child at most 40%) -> batch-1 fp16 tables -> compress fp16 -> batch-32 tables (fp16, fp32);
MobileNetV2 before ResNet-50 in each. Expect the batch-32 tables and some of fp16 to be
listed as skipped. Run as a script, a watchdog writes the results and exits at the budget +
40 s whatever is running (compress children killed), so the command ends within 8 minutes.
A second run can pick up what was skipped, e.g. `--sections tables --batches 32`.

The GPU session's command (device tool, carry [".whl"], timeout_s 540):
  bash benchmarks/gpu_check.sh            # does the two lines below; GPU_TESTS=1 also runs
                                          # the gpu-marked tests first (budget shortened)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
  PYTHONUNBUFFERED=1 timeout 500 python3 benchmarks/gpu_check.py --out "$OUT"

Wheels: the H200 image (Python 3.12, x86_64) has torch (CUDA), onnx, onnxruntime (CPU),
numpy, ml-dtypes, tqdm, scikit-image, pillow and pytest. onnxmerge imports onnx-graphsurgeon
at import time (api, compress), which it lacks: carry it. polygraphy is imported only by
MergeConvs and the polygraphy plugin (not by this script or tests/test_torch_cuda.py): carry
it only to run the rest of the test suite there. Fetch them here, in the repo root (.whl/ is
git-ignored):
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl onnx-graphsurgeon==0.6.1
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl polygraphy==0.53.6  # optional
Both are pure-Python wheels (60 KB and 490 KB); onnx-graphsurgeon needs numpy, onnx and
ml-dtypes, all on the image. onnxmerge itself is not installed there: PYTHONPATH=$PWD (this
script also puts the repo root on sys.path).

CPU check of the same code path (tests/test_gpu_check.py runs it in-process, ~10-30 s here):
  python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check_out
--quick: ResNet-18 at 64x64 and width 0.25, batch 1 and 2, a fast measuring policy, a few
staircase points, target 1.2 only (add --models mobilenet_v2 resnet50 for ~4 minutes more).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from onnxmerge.latency import MeasurePolicy  # noqa: E402
from onnxmerge.signature import ConvSignature  # noqa: E402

MD_NAME, JSON_NAME, LOG_NAME = "gpu_check.md", "gpu_check.json", "gpu_check.log"
DEFAULT_BUDGET_S = 420.0
HARD_STOP_GRACE_S = 40.0
_CHILDREN: list[subprocess.Popen] = []  # compress workers running now (the hard stop ends them)
STAIRCASE_SHARE = 0.15  # of the budget, at most
# The staircase's eager column: shorter than the tables' default policy (0.05 s warm-up, 25 ms
# blocks, up to 1 s) so that 384 points fit; its kernel column is timed in a CUDA graph anyway.
STAIR_POLICY = MeasurePolicy(warmup_s=0.02, block_s=0.01, max_s=0.3)
COMPRESS_SHARE = 0.4  # of the budget, at most, per model's child process
# --quick: a few milliseconds per measurement, so the CPU test runs the whole path quickly.
QUICK_POLICY = MeasurePolicy(
    warmup_runs=2, warmup_s=0.0, block_s=0.002, min_block=3, max_block=50, window=2,
    tolerance=0.5, max_s=0.05,
)  # fmt: skip


# -- settings ---------------------------------------------------------------------------------
@dataclass
class Stair:
    """One staircase probe: a conv with `kernel`, `in_channels` in, each of `outs` out."""

    name: str
    kernel: int
    in_channels: int
    outs: list[int]
    hw: int

    def signature(self, out_channels: int) -> ConvSignature:
        p = self.kernel // 2
        return ConvSignature(
            self.in_channels,
            out_channels,
            (self.kernel, self.kernel),
            (1, 1),
            (p, p, p, p),
            1,
            (self.hw, self.hw),
        )


@dataclass
class Settings:
    device: str
    quick: bool
    models: list[str]
    size: int
    width: float
    batches: list[int]
    dtypes: list[str]
    targets: list[str]
    compress_dtypes: list[str]
    stairs: list[Stair]
    stair_batches: list[int]
    stair_dtypes: list[str]
    policy: MeasurePolicy
    stair_policy: MeasurePolicy
    sections: list[str]
    calib_count: int
    calibrate: bool
    cudnn_benchmark: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="small sizes (the CPU test)")
    ap.add_argument("--out", default="gpu_check_out", help="folder for the .md/.json/.log")
    ap.add_argument("--cache", default=None, help="latency/importance cache (default: fresh)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    ap.add_argument(
        "--models", nargs="+", default=None, choices=["resnet50", "resnet18", "mobilenet_v2"],
        help="(mobilenet_v2 resnet50; --quick resnet18); each section runs them in this order",
    )  # fmt: skip
    ap.add_argument("--size", type=int, default=None, help="input size (224; --quick 64)")
    ap.add_argument("--width", type=float, default=None, help="width (1.0; --quick 0.25)")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="(1 32; --quick 1 2)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--targets", nargs="+", default=None, help="(1.2 1.5 max; --quick 1.2)")
    ap.add_argument("--compress-dtypes", nargs="+", default=None, help="(float32 float16)")
    ap.add_argument(
        "--sections", nargs="+", default=["tables", "compress", "staircase"],
        choices=["tables", "compress", "staircase"],
    )  # fmt: skip
    ap.add_argument(
        "--calib-count", type=int, default=4,
        help="compress's calib_count (its default is 16; 4 here: see the docstring)",
    )  # fmt: skip
    ap.add_argument("--no-calibrate", action="store_true", help="compress(calibrate=False)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cudnn.benchmark = True")
    ap.add_argument(
        "--hard-stop-grace", type=float, default=HARD_STOP_GRACE_S,
        help="run as a script: write and exit this long after the budget, whatever is running",
    )  # fmt: skip
    return ap.parse_args(argv)


def settings_from(a: argparse.Namespace) -> Settings:
    q = a.quick
    if q:
        stairs = [
            Stair("1x1", 1, 64, list(range(8, 65, 8)), 14),
            Stair("3x3", 3, 32, [8, 16, 24, 32], 14),
        ]
    else:
        stairs = [
            Stair("1x1", 1, 256, list(range(8, 513, 8)), 56),
            Stair("3x3", 3, 128, list(range(8, 257, 8)), 56),
        ]
    return Settings(
        device=a.device,
        quick=q,
        models=a.models or (["resnet18"] if q else ["mobilenet_v2", "resnet50"]),
        size=a.size or (64 if q else 224),
        width=a.width or (0.25 if q else 1.0),
        batches=a.batches or ([1, 2] if q else [1, 32]),
        dtypes=a.dtypes,
        targets=a.targets or (["1.2"] if q else ["1.2", "1.5", "max"]),
        compress_dtypes=a.compress_dtypes or (["float32"] if q else ["float32", "float16"]),
        stairs=stairs,
        stair_batches=a.batches or ([1, 2] if q else [1, 32]),
        stair_dtypes=a.dtypes,
        policy=QUICK_POLICY if q else MeasurePolicy(),
        stair_policy=QUICK_POLICY if q else STAIR_POLICY,
        sections=a.sections,
        calib_count=a.calib_count,
        calibrate=not a.no_calibrate,
        cudnn_benchmark=a.cudnn_benchmark,
    )


def build_model(name: str, size: int, width: float):
    from onnxmerge import zoo

    if name == "resnet50":
        return zoo.resnet(50, width=width, size=size)
    if name == "resnet18":
        return zoo.resnet(18, width=width, size=size)
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2(width=width, size=size)
    raise SystemExit(f"unknown model {name!r}: resnet50, resnet18 or mobilenet_v2")


def candidates(model) -> list:
    """compress()'s candidates (layermerge: pruned variants, weight-norm order, max kernel 7)."""
    from onnxmerge.analysis import analyze
    from onnxmerge.kinds.depth.kind import DepthKind

    return DepthKind().candidates(analyze(model))


# -- time, report, log ------------------------------------------------------------------------
class Clock:
    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Report:
    """The results (one dict, JSON-able), written as .md and .json after every change."""

    def __init__(self, out: Path, clock: Clock, mirror: Path | None) -> None:
        self.out, self.clock, self.mirror = out, clock, mirror
        self.lock = threading.RLock()
        self.data: dict[str, Any] = {
            "meta": {},
            "tables": [],
            "compress": [],
            "staircase": [],
            "skipped": [],
            "errors": [],
            "notes": [],
        }

    def say(self, text: str) -> None:
        print(f"[{self.clock.elapsed():6.1f} s] {text}", flush=True)

    def error(self, section: str, unit: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with self.lock:
            self.data["errors"].append(
                {"section": section, "unit": unit, "error": text, "trace": traceback.format_exc()}
            )
        self.say(f"ERROR in {section} {unit}: {text}")
        self.write()

    def skip(self, section: str, unit: str, why: str) -> None:
        with self.lock:
            self.data["skipped"].append({"section": section, "unit": unit, "why": why})
        self.say(f"skipped {section} {unit}: {why}")

    def write(self) -> None:
        with self.lock:
            self.data["meta"]["elapsed_s"] = round(self.clock.elapsed(), 1)
            text = json.dumps(self.data, indent=1, default=str)
            md = render_markdown(self.data)
            for folder in filter(None, {self.out, self.mirror}):
                folder.mkdir(parents=True, exist_ok=True)
                _atomic_write(folder / JSON_NAME, text)
                _atomic_write(folder / MD_NAME, md)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Tee(io.TextIOBase):
    """Writes to a stream and to log files (flushed at once: a killed run keeps its log)."""

    def __init__(self, stream, files) -> None:
        self.stream, self.files = stream, files

    def write(self, s: str) -> int:
        self.stream.write(s)
        for f in self.files:
            f.write(s)
            f.flush()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


# -- versions ---------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def versions(device: str) -> dict[str, Any]:
    import onnx

    from onnxmerge.latency.backend import available_cpus, cpu_name

    v: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpus": available_cpus(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
    }
    for mod in ("onnxruntime", "onnx_graphsurgeon", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as e:  # a missing one is recorded, not fatal
            v[mod] = f"missing ({type(e).__name__})"
    commit = _run(["git", "rev-parse", "HEAD"])
    if commit:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
        commit += " (uncommitted changes)" if dirty else ""
    v["onnxmerge_commit"] = commit or "unknown (no git checkout)"
    try:
        import torch

        v["torch_cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        v["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        v["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        v["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        v["cuda_available"] = torch.cuda.is_available()
        if device == "cuda" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            v["gpu"] = props.name
            v["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            v["gpu_sms"] = props.multi_processor_count
            v["gpu_capability"] = f"{props.major}.{props.minor}"
            v["driver"] = _run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            )
    except Exception as e:
        v["torch_error"] = repr(e)
    return v


def warm_up_device(device: str) -> float:
    """Seconds for the first convs on the device (CUDA context, cuDNN handles, fp32 and fp16)."""
    import torch

    t = time.perf_counter()
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(1, 8, 16, 16, device=device, dtype=dtype)
        w = torch.randn(8, 8, 3, 3, device=device, dtype=dtype)
        torch.nn.functional.conv2d(x, w, padding=1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


# -- section 1: latency tables ----------------------------------------------------------------
@dataclass
class Context:
    s: Settings
    clock: Clock
    report: Report
    cache: Path
    models: dict = field(default_factory=dict)  # name -> (model, candidates)

    def backend(self, batch: int, dtype: str, policy: MeasurePolicy | None = None):
        from onnxmerge.latency import get_backend

        policy = policy or self.s.policy
        return get_backend("torch", device=self.s.device, batch=batch, dtype=dtype, policy=policy)

    def model(self, name: str):
        if name not in self.models:
            model = build_model(name, self.s.size, self.s.width)
            self.models[name] = (model, candidates(model))
        return self.models[name]


def table_unit(ctx: Context, name: str, batch: int, dtype: str) -> None:
    from onnxmerge.latency import LatencyTable, time_model

    model, cands = ctx.model(name)
    sigs = [c.signature for c in cands]
    unique = list(dict.fromkeys(sigs))
    row: dict[str, Any] = {
        "model": name, "batch": batch, "dtype": dtype, "candidates": len(cands),
        "signatures": len(unique), "status": "running",
    }  # fmt: skip
    with ctx.report.lock:
        ctx.report.data["tables"].append(row)
    be = ctx.backend(batch, dtype)
    cache = ctx.cache / name
    t0 = time.perf_counter()
    done = 0
    with LatencyTable(cache, be) as table:
        for i in range(0, len(unique), 8):
            if ctx.clock.left() <= 0:
                break
            table.measure_all(unique[i : i + 8], progress=False)
            done = min(i + 8, len(unique))
        complete = done == len(unique)
        if complete:  # the overhead conv too, as compress measures it
            lat = table.measure_all(sigs, progress=False, in_network=True)
        row["cold_measured"] = table.stats.new
        row["cold_cached"] = table.stats.hits
    row["cold_s"] = time.perf_counter() - t0
    if not complete:
        row["status"] = f"partial: {done} of {len(unique)} signatures timed (budget)"
        ctx.report.say(f"tables {name} b{batch} {dtype}: {row['status']}")
        return
    t1 = time.perf_counter()
    with LatencyTable(cache, be) as table:
        table.measure_all(sigs, progress=False, in_network=True)
        row["warm_measured"] = table.stats.new
    row["warm_s"] = time.perf_counter() - t1
    row["per_signature_ms"] = 1e3 * row["cold_s"] / max(row["cold_measured"], 1)
    row["table_sum_ms"] = sum(lat[c.signature] for c in cands if c.unchanged)
    inp = model.graph.input[0]
    shape = (batch, *[d.dim_value for d in inp.type.tensor_type.shape.dim][1:])
    row["model_ms"] = time_model(model, be, shapes={inp.name: shape}).median_ms
    row["status"] = "ok"
    ctx.report.say(
        f"tables {name} b{batch} {dtype}: {len(cands)} candidates, {len(unique)} signatures, "
        f"cold {row['cold_s']:.1f} s ({row['cold_measured']} timed), warm {row['warm_s']:.2f} s; "
        f"model {row['model_ms']:.3f} ms, table sum {row['table_sum_ms']:.3f} ms"
    )


# -- section 2: compress (one child process per model and dtype) ------------------------------
def compress_worker(spec_path: str) -> int:
    """Child: compress one model at each target in turn; one JSON line per target."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["results"])
    deadline = time.perf_counter() + spec["allowed_s"]
    import torch

    from onnxmerge.compress import compress
    from onnxmerge.errors import OnnxMergeError

    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]
    warm_up_device(spec["device"])
    model = build_model(spec["model"], spec["size"], spec["width"])
    options = {
        "device": spec["device"], "batch": 1, "dtype": spec["dtype"],
        "policy": MeasurePolicy(**spec["policy"]),
    }  # fmt: skip
    last = 0.0
    for target in spec["targets"]:
        row: dict[str, Any] = {"model": spec["model"], "dtype": spec["dtype"], "target": target}
        left = deadline - time.perf_counter()
        if last and left < 1.2 * last:
            row.update(status="skipped", note=f"budget: {left:.0f} s left, last took {last:.0f} s")
            _append_line(out, row)
            continue
        print(f"compress {spec['model']} {spec['dtype']} {target} ...", flush=True)
        t = time.perf_counter()
        try:
            res = compress(
                model,
                target if target == "max" else float(target),
                kind="depth",  # section 1 timed depth's candidates
                backend="torch",
                backend_options=options,
                cache_dir=spec["cache"],
                progress=False,
                calib_count=spec["calib_count"],
                calibrate=spec["calibrate"],
            )
        except OnnxMergeError as e:
            msg = str(e)
            status = "error"
            for key, word in [
                ("out of reach", "out of reach"),
                ("not reached", "not reached"),
                ("no plan is faster", "no faster plan"),
            ]:
                status = word if key in msg and status == "error" else status
            row.update(status=status, note=msg)
        except Exception as e:
            row.update(
                status="error", note=f"{type(e).__name__}: {e}", trace=traceback.format_exc()
            )
        else:
            plan = res.plan
            measured = plan.measured_speedup
            row.update(
                status="ok",
                measured_speedup=measured,
                reached=target == "max" or measured >= float(target) * 0.97,
                input_ms=plan.measured_input_ms,
                output_ms=plan.measured_output_ms,
                predicted_ms=plan.predicted_ms,
                merged_groups=sum(1 for g in plan.groups if g.end - g.start > 1),
                tries=res.tries,
                candidates=res.candidates,
                signatures=res.signatures,
                latency_new=res.latency_new,
                latency_hits=res.latency_hits,
                importance_hits=res.importance_hits,
                log=res.log,
            )
        row["tool_s"] = last = time.perf_counter() - t
        _append_line(out, row)
        print(f"  -> {row['status']} in {row['tool_s']:.1f} s", flush=True)
    return 0


def _append_line(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def compress_unit(ctx: Context, name: str, dtype: str, allowed_s: float) -> None:
    s = ctx.s
    work = Path(tempfile.mkdtemp(prefix=f"gpu_check_{name}_{dtype}_"))
    results = work / "results.jsonl"
    spec = {
        "model": name, "size": s.size, "width": s.width, "dtype": dtype, "device": s.device,
        "targets": s.targets, "cache": str(ctx.cache / name), "policy": asdict(s.policy),
        "calib_count": s.calib_count, "calibrate": s.calibrate,
        "cudnn_benchmark": s.cudnn_benchmark, "results": str(results), "allowed_s": allowed_s,
    }  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--compress-worker", str(work / "spec.json")]
    ctx.report.say(f"compress {name} {dtype}: child process, at most {allowed_s:.0f} s")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    _CHILDREN.append(proc)
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            del tail[:-30]
            print("    | " + line.rstrip(), flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killed = False
    try:
        proc.wait(timeout=allowed_s + 15)
    except subprocess.TimeoutExpired:
        killed = True
        proc.kill()
        proc.wait()
    _CHILDREN.remove(proc)
    reader.join(timeout=5)
    rows = []
    if results.exists():
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    done = {r["target"] for r in rows}
    for target in s.targets:
        if target not in done:
            why = "killed at its deadline" if killed else f"child exited {proc.returncode}"
            rows.append(
                {"model": name, "dtype": dtype, "target": target, "status": "interrupted",
                 "note": f"{why}; its last lines: " + " / ".join(tail[-3:])}
            )  # fmt: skip
    with ctx.report.lock:
        ctx.report.data["compress"].extend(rows)
    shutil.rmtree(work, ignore_errors=True)


# -- section 3: staircase ---------------------------------------------------------------------
def graph_kernel_ms(sig: ConvSignature, batch: int, dtype: str, reps: int = 20) -> float:
    """The conv alone on CUDA: `reps` launches captured in a CUDA graph, replayed and timed with
    events; median over 7 replays, per conv."""
    import torch

    F = torch.nn.functional
    tdtype = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, sig.in_channels, *sig.in_hw, device="cuda", dtype=tdtype, generator=g)
    w = torch.randn(
        sig.out_channels, sig.in_channels // sig.groups, *sig.kernel,
        device="cuda", dtype=tdtype, generator=g,
    )  # fmt: skip
    b = torch.zeros(sig.out_channels, device="cuda", dtype=tdtype)
    pad = sig.pads[:2]

    def conv():
        return F.conv2d(x, w, b, sig.stride, pad, sig.dilation, sig.groups)

    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                conv()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                conv()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
    del graph
    return float(statistics.median(times))


def eager_ms(backend, sig: ConvSignature, feeds: dict, probe: str) -> float:
    """LatencyTable.measure's number (the one-conv model on the backend), with the random input
    drawn once per probe, batch and dtype (at batch 32 drawing it takes longer than timing)."""
    from onnxmerge.latency import conv_model, random_feed

    model = conv_model(sig, batch=backend.batch, dtype=backend.dtype)
    key = (probe, backend.batch, backend.dtype)
    if key not in feeds:
        feeds[key] = random_feed(model)
    session = backend.load(model.SerializeToString())
    try:
        return backend.measure(session, feeds[key]).median_ms
    finally:
        backend.release(session)


def find_steps(channels: list[int], ms: list[float], min_rel: float = 0.03) -> dict[str, Any]:
    """Rises (and drops) of latency against channels well above the local trend.

    A rise from c_prev to c is a step when it exceeds both 3x the median absolute change
    between neighbours (a linear trend is no staircase) and `min_rel` of the latency.
    `align`: the largest power of two >= 8 dividing every c_prev a step starts after.
    """
    pts = sorted((c, m) for c, m in zip(channels, ms, strict=True) if m is not None)
    if len(pts) < 3:
        return {"up": None, "down": None, "align": None}  # too few points to tell
    diffs = [b[1] - a[1] for a, b in zip(pts[:-1], pts[1:], strict=True)]
    typical = float(np.median(np.abs(diffs)))
    up, down = [], []
    for (c0, m0), (c1, _), d in zip(pts[:-1], pts[1:], diffs, strict=True):
        threshold = max(3 * typical, min_rel * m0)
        if d > threshold:
            up.append([c0, c1, round(d / m0, 3)])
        elif d < -threshold:
            down.append([c0, c1, round(d / m0, 3)])
    align = None
    if up:
        for a in (512, 256, 128, 64, 32, 16, 8):
            if all(c0 % a == 0 for c0, _, _ in up):
                align = a
                break
    return {"up": up, "down": down, "align": align}


def staircase_section(ctx: Context, deadline: float) -> None:
    """All configs measured coarse to fine (every 64th channel count first, then 32nd, ...),
    so a budget cut leaves every config covered, only sparser."""
    s = ctx.s
    cuda = s.device == "cuda"
    entries = []
    for st in s.stairs:
        for batch in s.stair_batches:
            for dtype in s.stair_dtypes:
                entry = {
                    "conv": st.name, "in_channels": st.in_channels, "hw": st.hw,
                    "batch": batch, "dtype": dtype, "points": {}, "status": "running",
                }  # fmt: skip
                entries.append((st, entry))
                with ctx.report.lock:
                    ctx.report.data["staircase"].append(entry)

    def level(c: int) -> int:
        return next(i for i, a in enumerate((64, 32, 16, 8, 1)) if c % a == 0)

    work = [
        (level(c), c, st, entry) for st, entry in entries for c in st.outs
    ]  # stable sort keeps configs interleaved within a level
    work.sort(key=lambda w: (w[0], w[1]))
    backends: dict = {}
    feeds: dict = {}  # one input per probe, batch and dtype: only the output channels change
    cut = False
    last_write = time.perf_counter()
    for _, c, st, entry in work:
        if ctx.clock.elapsed() > deadline:
            cut = True
            break
        key = (entry["batch"], entry["dtype"])
        if key not in backends:
            backends[key] = ctx.backend(*key, policy=s.stair_policy)
        sig = st.signature(c)
        point: dict[str, Any] = {}
        try:
            point["eager_ms"] = eager_ms(backends[key], sig, feeds, st.name)
        except Exception as e:
            point["error"] = f"{type(e).__name__}: {e}"
        if cuda and "error" not in point:
            try:
                point["kernel_ms"] = graph_kernel_ms(sig, entry["batch"], entry["dtype"])
            except Exception as e:
                point["kernel_error"] = f"{type(e).__name__}: {e}"
        entry["points"][c] = point
        if time.perf_counter() - last_write > 10:
            ctx.report.write()
            last_write = time.perf_counter()
    for st, entry in entries:
        pts = entry["points"]
        chans = sorted(pts)
        entry["measured"] = f"{len(chans)} of {len(st.outs)}"
        for col in ("eager_ms", "kernel_ms"):
            vals = [pts[c].get(col) for c in chans]
            if any(v is not None for v in vals):
                entry[f"steps_{col[:-3]}"] = find_steps(chans, vals)
        errors = [p.get("error") or p.get("kernel_error") for p in pts.values()]
        errors = [e for e in errors if e]
        entry["status"] = (
            f"errors at {len(errors)} points: {errors[0]}" if errors
            else "partial (budget)" if cut and len(chans) < len(st.outs) else "ok"
        )  # fmt: skip
    if cut:
        ctx.report.skip("staircase", "remaining points", "budget share spent")


# -- markdown ---------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".3f", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def _steps_text(steps: dict | None, limit: int = 10) -> str:
    if not steps:
        return "-"
    up = steps.get("up")
    if up is None:
        return "too few points"
    if not up:
        return "none"
    parts = [f"{c0}->{c1} (+{r:.0%})" for c0, c1, r in up[:limit]]
    more = f" +{len(up) - limit} more" if len(up) > limit else ""
    return ", ".join(parts) + more


def render_markdown(d: dict) -> str:
    m = d.get("meta", {})
    v = m.get("versions", {})
    lines = [
        "# onnxmerge GPU check (torch backend)",
        "",
        f"- date: {m.get('date', '?')}; device: {m.get('device', '?')}"
        + (" (--quick)" if m.get("quick") else ""),
        f"- command: `{m.get('command', '')}`",
        f"- budget {m.get('budget_s', '?')} s, elapsed {m.get('elapsed_s', '?')} s; "
        f"device warm-up {_f(m.get('device_init_s'), '.1f')} s",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)) if v else "- versions: ?",
        f"- measuring policy: {m.get('policy', '?')}; staircase: {m.get('staircase_policy', '?')}",
        f"- compress: calib_count {m.get('settings', {}).get('calib_count', '?')}, calibrate "
        f"{m.get('settings', {}).get('calibrate', '?')}",
        "",
        "## 1. Latency tables",
        "",
        "Cold: a fresh cache, every signature timed; warm: a second table on the same cache. "
        "model ms: the whole input network at that batch and dtype; table ms: its chain convs "
        "summed from the table (per-call overhead subtracted).",
        "",
        "| model | batch | dtype | candidates | signatures | cold s | timed | ms/sig | warm s "
        "| model ms | table ms | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d.get("tables", []):
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {r.get('candidates', '-')} | "
            f"{r.get('signatures', '-')} | {_f(r.get('cold_s'), '.1f')} | "
            f"{_f(r.get('cold_measured'))} | {_f(r.get('per_signature_ms'), '.0f')} | "
            f"{_f(r.get('warm_s'), '.2f')} | {_f(r.get('model_ms'))} | "
            f"{_f(r.get('table_sum_ms'))} | {r.get('status', '-')} |"
        )
    lines += [
        "",
        "## 2. compress on the torch backend (batch 1)",
        "",
        "measured: input / output latency timed interleaved on the device. tool s: the whole "
        "compress() call (the latency table warm from section 1; importance on the CPU, cold "
        "for each model's first target). table new: signatures timed during the call.",
        "",
        "| model | dtype | target | status | measured | input ms | output ms | predicted ms "
        "| merged groups | plans | tool s | table new | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d.get("compress", []):
        speed = r.get("measured_speedup")
        note = r.get("note", "")
        if r.get("status") == "ok":
            note = next((x for x in r.get("log", []) if x.startswith("time:")), "")
            note += "" if r.get("reached") else " (below target)"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['target']} | {r.get('status', '-')} | "
            f"{_f(speed, '.2f') + 'x' if speed else '-'} | {_f(r.get('input_ms'))} | "
            f"{_f(r.get('output_ms'))} | {_f(r.get('predicted_ms'))} | "
            f"{_f(r.get('merged_groups'))} | {_f(r.get('tries'))} | {_f(r.get('tool_s'), '.1f')} | "
            f"{_f(r.get('latency_new'))} | {note.replace('|', '/')} |"
        )
    stairs = d.get("staircase", [])
    lines += [
        "",
        "## 3. Channel staircase (latency vs output channels)",
        "",
        "eager: the backend's measurement (the eager call, launch included: what the table "
        "stores); kernel: the conv alone in a CUDA graph (CUDA only). Steps: c_prev->c where "
        "latency rises well above the local trend; align: the largest power of two every step "
        "starts after (width pruning's alignment).",
        "",
        "| conv | in | hw | batch | dtype | points | eager ms range | eager steps | eager align "
        "| kernel ms range | kernel steps | kernel align | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in stairs:
        pts = e.get("points", {})

        def rng(col: str, pts=pts) -> str:
            vals = [p[col] for p in pts.values() if p.get(col) is not None]
            return f"{min(vals):.4f}-{max(vals):.4f}" if vals else "-"

        se, sk = e.get("steps_eager"), e.get("steps_kernel")
        lines.append(
            f"| {e['conv']} | {e['in_channels']} | {e['hw']} | {e['batch']} | {e['dtype']} | "
            f"{e.get('measured', '-')} | {rng('eager_ms')} | {_steps_text(se)} | "
            f"{_f((se or {}).get('align'))} | {rng('kernel_ms')} | {_steps_text(sk)} | "
            f"{_f((sk or {}).get('align'))} | {e.get('status', '-')} |"
        )
    for conv in dict.fromkeys(e["conv"] for e in stairs):
        group = [e for e in stairs if e["conv"] == conv]
        chans = sorted({int(c) for e in group for c in e.get("points", {})})
        if not chans:
            continue
        heads = [f"b{e['batch']} {e['dtype']}" for e in group]
        cols = ["eager_ms", "kernel_ms"]
        lines += [
            "",
            f"{conv} conv, ms per output channel count (eager / kernel):",
            "",
            "| out | " + " | ".join(heads) + " |",
            "|---|" + "---|" * len(heads),
        ]
        for c in chans:
            cells = []
            for e in group:
                p = e["points"].get(c) or e["points"].get(str(c)) or {}
                cells.append(" / ".join(_f(p.get(col), ".4f") for col in cols))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if d.get("skipped"):
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['section']} {s['unit']}: {s['why']}" for s in d["skipped"]]
    if d.get("errors"):
        lines += ["", "## Errors", ""]
        lines += [f"- {e['section']} {e['unit']}: {e['error']}" for e in d["errors"]]
    if d.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in d["notes"]]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------
def run_check(s: Settings, a: argparse.Namespace, report: Report, cache: Path) -> None:
    clock = report.clock
    ctx = Context(s, clock, report, cache)
    meta = report.data["meta"]
    try:
        import torch

        torch.backends.cudnn.benchmark = s.cudnn_benchmark
        if s.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        meta["device_init_s"] = warm_up_device(s.device)
    except Exception as e:
        report.error("setup", "torch", e)
    meta["versions"] = versions(s.device)
    report.write()

    def tables(batch: int, dtype: str) -> None:
        for name in s.models:
            unit = f"{name} b{batch} {dtype}"
            if clock.left() <= 0:
                report.skip("tables", unit, "budget spent")
                continue
            try:
                table_unit(ctx, name, batch, dtype)
            except Exception as e:
                report.error("tables", unit, e)
            report.write()

    def compress_all(dtype: str) -> None:
        for name in sorted(s.models, key=lambda n: n != "mobilenet_v2"):  # cheaper one first
            unit = f"{name} {dtype}"
            allowed = min(clock.left(), COMPRESS_SHARE * clock.budget_s)
            if allowed < 20:
                report.skip("compress", unit, f"budget: {clock.left():.0f} s left")
                continue
            try:
                compress_unit(ctx, name, dtype, allowed)
            except Exception as e:
                report.error("compress", unit, e)
            report.write()

    # Priority: each model's batch-1 table in the first dtype (compress needs it) -> staircase
    # -> compress -> batch 1 in the other dtypes, each followed by its compress -> larger batches.
    b0, dt0 = s.batches[0], s.dtypes[0]
    if "tables" in s.sections:
        tables(b0, dt0)
    if "staircase" in s.sections:
        if clock.left() > 0:
            deadline = min(clock.budget_s, clock.elapsed() + STAIRCASE_SHARE * clock.budget_s)
            try:
                staircase_section(ctx, deadline)
            except Exception as e:
                report.error("staircase", "all", e)
        else:
            report.skip("staircase", "all", "budget spent")
        report.write()
    if "compress" in s.sections and dt0 in s.compress_dtypes:
        compress_all(dt0)
    for dtype in s.dtypes[1:]:
        if "tables" in s.sections:
            tables(b0, dtype)
        if "compress" in s.sections and dtype in s.compress_dtypes:
            compress_all(dtype)
    if "compress" in s.sections:
        for dtype in s.compress_dtypes:
            if dtype not in s.dtypes:
                compress_all(dtype)
    if "tables" in s.sections:
        for batch in s.batches[1:]:
            for dtype in reversed(s.dtypes):
                tables(batch, dtype)


def main(argv: list[str] | None = None, hard_stop: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--compress-worker"]:
        return compress_worker(argv[1])
    a = parse_args(argv)
    s = settings_from(a)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mirror = Path(os.environ["OUT"]).resolve() if os.environ.get("OUT") else None
    if mirror == out:
        mirror = None
    logs = [open(out / LOG_NAME, "w")]  # noqa: SIM115 (closed below)
    if mirror is not None:
        mirror.mkdir(parents=True, exist_ok=True)
        logs.append(open(mirror / LOG_NAME, "w"))  # noqa: SIM115
    clock = Clock(a.budget_s)
    report = Report(out, clock, mirror)
    cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix="gpu_check_cache_"))
    meta = report.data["meta"]
    meta.update(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        command="python benchmarks/gpu_check.py " + " ".join(argv),
        device=s.device,
        quick=s.quick,
        budget_s=a.budget_s,
        cache=str(cache),
        policy=asdict(s.policy),
        staircase_policy=asdict(s.stair_policy),
        settings={
            k: v for k, v in asdict(s).items() if k not in ("policy", "stair_policy", "stairs")
        },
        stairs=[asdict(st) for st in s.stairs],
    )
    if a.cache and any(cache.glob("*/*.sqlite")):
        report.data["notes"].append(f"--cache {cache} already held tables: 'cold' may be warm")
    timer = None
    if hard_stop:

        def stop() -> None:
            for child in list(_CHILDREN):
                child.kill()
            with report.lock:
                report.data["notes"].append(
                    f"hard stop at {clock.elapsed():.0f} s (budget {a.budget_s:.0f} s + "
                    f"{a.hard_stop_grace:.0f} s): the unit then running was cut short"
                )
                report.write()
            print(f"HARD STOP at {clock.elapsed():.0f} s; results in {out}", flush=True)
            os._exit(0)

        timer = threading.Timer(a.budget_s + a.hard_stop_grace, stop)
        timer.daemon = True
        timer.start()
    with contextlib.ExitStack() as stack:
        for f in logs:
            stack.callback(f.close)
        stack.enter_context(contextlib.redirect_stdout(Tee(sys.stdout, logs)))
        stack.enter_context(contextlib.redirect_stderr(Tee(sys.stderr, logs)))
        report.say(f"gpu_check on {s.device}: out {out}, cache {cache}, budget {a.budget_s:.0f} s")
        try:
            run_check(s, a, report, cache)
        finally:
            if timer is not None:
                timer.cancel()
            report.write()
        print()
        print(render_markdown(report.data), flush=True)
        report.say(f"done; wrote {out / MD_NAME} and {out / JSON_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main(hard_stop=True))
