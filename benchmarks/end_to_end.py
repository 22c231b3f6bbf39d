"""End to end: `compress` on the zoo replicas, measured speedup and tool wall time.

For each model (onnxmerge.zoo, random weights, batch 1, ort-cpu with 2 threads) and each target
(1.2, 1.5, max): the measured end-to-end speedup (input vs output, interleaved in one process),
the tool's wall time cold (empty latency and importance caches, first target only) and warm
(same model and target again), and the fuse check: `onnxmerge fuse` of the fine-tune graph
against the uncalibrated merged network (max relative difference on a random input).

Run: python benchmarks/end_to_end.py [--models resnet18 ...] [--size 224] [--targets 1.2 1.5 max]
Targets (2 cores): measured >= target - 3%; ResNet-50 at 224 cold < 10 min, warm < 30 s.

Measured 2026-11-22 at --size 224 (2 cores, nothing else heavy running; the committed code),
in 13 min: measured speedup at 1.2 / 1.5 / max, cold s (first target), warm s (1.2 / 1.5 /
max); fuse is `fuse --plan` of the fine-tune graph vs the uncalibrated merged network (max
relative difference; the same Conv count in every row):
  resnet18         1.17x / 1.53x / 5.83x                  27 s  13.4 / 13.7 / 6.1   0
  resnet50         1.25x / 2.30x / 2.90x                 263 s  13.8 / 9.2 / 11.4   0
  mobilenet_v2     1.22x / 1.63x / 8.92x                 160 s   5.0 / 2.2 / 4.9    0
  mobilenet_v3     1.25x / not reached (best 1.39x) / 1.46x       19 s   5.7 / - / 2.0   0
  efficientnet_b0  1.25x / out of reach (predicted <= 1.36x) / 1.22x   28 s  14.7 / - / 9.6  0
  yolo             1.22x / 1.48x / 1.46x                  18 s   3.7 / 6.2 / 2.5    0
ResNet-50 at 224: cold 263 s (target 10 min), warm <= 13.8 s (target 30 s). Dropping the
candidates no faster than their convs unmerged (181-187 of 300 merged candidates, ~86% of the
composed weights) took it from 1222 s. ResNet-50 at 1.5 overshot (2.30x): its first plan
measured just short, the cut budget's plan overshot, and no plan in between turned up; the
same call rerun on the warm cache reached 1.48x on its first plan. An earlier run the same
day (before the search kept a bracket) gave 1.31/1.53/5.56, 1.30/1.58/1.83, 1.22/1.47/8.31,
1.18/-/1.42, 1.20/-/1.16, 1.17/-/1.40: the measured figures move by several percent between
runs. SE blocks (MobileNetV3, EfficientNet) and YOLO's Split/Concat end chains early, which
caps what merging can remove. "max" is the table's fastest plan; measured it can be slower
than a 1.2x plan (EfficientNet).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxmerge import zoo  # noqa: E402
from onnxmerge.api import fuse  # noqa: E402
from onnxmerge.compress import compress  # noqa: E402
from onnxmerge.errors import OnnxMergeError  # noqa: E402
from onnxmerge.runtime import compare_outputs  # noqa: E402

MODELS = {
    "resnet18": lambda s: zoo.resnet(18, size=s),
    "resnet50": lambda s: zoo.resnet(50, size=s),
    "mobilenet_v2": lambda s: zoo.mobilenet_v2(size=s),
    "mobilenet_v3": lambda s: zoo.mobilenet_v3(size=s),
    "efficientnet_b0": lambda s: zoo.efficientnet_b0(size=s),
    "yolo": lambda s: zoo.yolo(size=max(s // 32 * 32, 64)),
}


def run(model, target, cache):
    t = time.perf_counter()
    res = compress(model, target, cache_dir=cache, progress=False)
    return res, time.perf_counter() - t


def fuse_check(model, res) -> str:
    """`fuse --plan` of the fine-tune graph vs the uncalibrated merged network: max relative
    difference, and whether it has the merged network's Conv count."""
    merged = res.rebuild()
    fused, _ = fuse(res.finetune_graph(), plan=res.plan)
    rel = max(d.max_rel for d in compare_outputs(merged, fused).values())
    same = _convs(fused) == _convs(merged)
    return f"{rel:.1e}" + ("" if same else f" ({_convs(fused)} vs {_convs(merged)} convs)")


def _convs(model) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--targets", nargs="+", default=["1.2", "1.5", "max"])
    a = ap.parse_args()
    print(
        "| model | target | measured | ok | merged groups | cold s | warm s | fuse rel |\n"
        "|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for name in a.models:
        model = MODELS[name](a.size)
        cache = tempfile.mkdtemp(prefix=f"onnxmerge-e2e-{name}-")
        for i, target in enumerate(a.targets):
            speedup = target if target == "max" else float(target)
            try:
                res, first = run(model, speedup, cache)
                _, warm = run(model, speedup, cache)
            except OnnxMergeError as exc:
                print(f"| {name} | {target} | {exc} | | | | | |", flush=True)
                continue
            measured = res.plan.measured_speedup
            ok = target == "max" or measured >= float(target) * 0.97
            groups = sum(1 for g in res.plan.groups if g.end - g.start > 1)
            cold = f"{first:.0f}" if i == 0 else "-"
            print(
                f"| {name} | {target} | {measured:.2f}x | {'yes' if ok else 'NO'} | {groups} | "
                f"{cold} | {warm:.1f} | {fuse_check(model, res)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
