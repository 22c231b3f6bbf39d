"""End to end: `compress` on the zoo replicas, measured speedup and tool wall time.

For each model (onnxmerge.zoo, random weights, batch 1, ort-cpu with 2 threads) and each target
(1.2, 1.5, max): the measured end-to-end speedup (input vs output, interleaved in one process;
as the tool reported it, and since 2026-12-03 again apart, in a fresh process),
the tool's wall time cold (empty latency and importance caches, first target only) and warm
(same model and target again), and the fuse check: `onnxmerge fuse` of the fine-tune graph
against the uncalibrated merged network (max relative difference on a random input).

Run: python benchmarks/end_to_end.py [--models resnet18 ...] [--size 224] [--targets 1.2 1.5 max]
     [--prune depth|width|both]   (fuse rel only for depth: a pruned graph is its own fine-tune
     graph) [--logs FOLDER]   (each run's log, first and warm)
Targets (2 cores): measured >= target - 3%; ResNet-50 at 224 cold < 10 min, warm < 30 s.

Measured 2026-11-30 at --size 224 (2 cores; the fidelity benchmark was not yet running), with
the Kind seam and the search measuring the fastest plan before calling a target out of reach:
measured speedup at 1.2 / 1.5 / max, cold s (first target), warm s (1.2 / 1.5 / max); fuse is
`fuse --plan` of the fine-tune graph vs the uncalibrated merged network (max relative
difference):
  resnet18         1.24x / 1.57x / 5.28x                          24 s   7.6 / 7.8 / 5.1    0
  resnet50         1.19x / 1.63x / 2.84x                         288 s  19.0 / 12.9 / 13.0  0
  mobilenet_v2     1.19x / 1.47x / 8.78x                         166 s   3.1 / 7.9 / 2.4    0
  mobilenet_v3     1.18x / not reached (best 1.42x) / 1.39x       18 s   2.2 / - / 3.4      0
  efficientnet_b0  1.17x / out of reach (fastest measured 1.17x) / 1.28x   28 s  7.3 / - / 10.3  0
  yolo             1.23x / 1.47x / 1.43x                          15 s   3.8 / 3.0 / 7.6    0
ResNet-50 at 224: cold 288 s (target 10 min), warm <= 19 s (target 30 s). The previous run
(2026-11-22, before the seam) gave 1.17/1.53/5.83, 1.25/2.30/2.90, 1.22/1.63/8.92,
1.25/-/1.46, 1.25/-/1.22, 1.22/1.48/1.46, cold 27/263/160/19/28/18 s: the measured figures move
by several percent between runs. Dropping the candidates no faster than their convs unmerged
(~60% of ResNet-50's merged candidates) took cold ResNet-50 from 1222 s to under 5 minutes.
SE blocks (MobileNetV3, EfficientNet) and YOLO's Split/Concat end chains early, which caps what
merging can remove; EfficientNet-B0's fastest plan is predicted at 1.44x from per-conv timings
but measures 1.17x end to end, so 1.5 is reported out of reach. "max" is the table's fastest
plan; measured it can be slower than a 1.5x plan (YOLO).

--prune width, measured 2026-11-30 at 224 (2 cores; a review helper ran beside it for part of
the time), targets 1.2 / 1.5 / 2.0, cold s (first target), warm s:
  resnet18         1.37x / 1.75x / 2.15x    229 s   28.4 / 10.9 / 13.1
  mobilenet_v2     1.23x / 1.48x / 2.18x    167 s    4.1 / 8.8 / 12.4
  yolo             1.24x / 1.63x / 1.98x     78 s    6.2 / 6.0 / 5.0
  efficientnet_b0  1.23x / 1.52x / 2.08x    290 s    6.6 / 8.7 / 9.8
Every target is reached; width reaches 1.5x and 2.0x on EfficientNet-B0, where depth tops out
at 1.28x. The linear cost model underestimates what a cut saves (both sides of a conv shrink),
so plans overshoot: ResNet-18 at 1.2 landed at 1.37x. ResNet-50 at 1.2 alone (nothing else
running): 1.25x, cold 657 s, warm 34.0 s; after the importance stopped capturing the
original's targets again for each width of a group, 1.26x, cold 497 s, warm 31.4 s (one run
each): cold is within 10 min, warm still just over 30 s. 2026-12-01, with the budget memory
and mean replacement (a review helper ran beside part of it): ResNet-50 at 1.5 / 2.0 1.56x /
2.35x (2.0: no plan measured inside the window, the closest above it kept; the linear cost
model's first try measured 3.81x for a plan predicted at 2.0x), cold 325 s, warm 15.0 /
14.8 s.

--prune both (the split searched: width asked for 1/3, 1/2 and 2/3 of the target, each split
run to the end and the least distorting kept), measured 2026-11-30 at 224 (2 cores; tests and
a profiling run shared the machine part of the time, so tool times are upper bounds), targets
1.2 / 1.5 / 2.0, cold s (first target), warm s:
  yolo             1.17x / 1.58x / 1.99x     64 s   24.3 / 40.0 / 32.6
  mobilenet_v2     1.17x / 1.63x / 2.01x    395 s  210.2 / 118.8 / 312.0
  resnet18         1.23x / - / -            142 s   36.3           (1.2 only, machine quiet)
  efficientnet_b0  1.19x / - / -            277 s   34.9           (1.2 only, machine quiet)
Every target is reached (1.17x is inside the 3% window of 1.2). Warm runs are slow: each of
the three splits measures its plans end to end again, and a width stage that lands on another
plan (timing noise) gives the depth stage a network whose importance is not cached.
Later the same day, nothing else running: ResNet-18 1.53x / 2.21x at 1.5 / 2.0 (cold 153 s,
warm 56.0 / 50.5 s), EfficientNet-B0 1.48x / 2.02x (cold 253 s, warm 40.9 / 58.5 s), ResNet-50
1.22x at 1.2 (cold 749 s, over the 10-minute target; warm 168.7 s).

Then the kept split was remembered in the cache folder (memory.RequestMemory: a warm run of
the same request runs that split alone): ResNet-18 at 1.5 1.51x, cold 182 s, warm 22.0 s (was
56.0 s); ResNet-50 at 1.2 1.19x, cold 756 s, warm 29.4 s (was 168.7 s; target 30 s); ResNet-50
at 1.5 1.56x, cold 765 s, warm 42.3 s. ResNet-50 at 2.0 was not run.

2026-12-01, after width importance started running only the part of the network a cut changed
(calibration.baseline; ResNet-50's width stage alone, profiled: 448 s -> 300 s) and stage
summaries became lazy: `--models resnet50 --targets 1.2 1.5 2.0 --prune both`, nothing else
running: 1.21x / 1.52x / 2.09x, cold 459 s, warm 14.3 / 76.4 / 44.0 s. Rerun warm with the same
cache (four runs): 30.6 and 31.3 s at 1.5, 38.3 and 40.0 s at 2.0.

2026-12-01, after warm runs started replaying the cold run's budgets (memory.RequestMemory
also remembers each stage's budget as a fraction of the unchanged network; the input's latency
is cached as a ratio to its table time): the same command, nothing else running, a fresh
cache: 1.27x / 1.54x / 2.10x, cold 483 s, warm 39.9 / 177.0 / 81.2 s. Warm runs rerun with
an earlier cache the same day took 13.8-28.0 s at 1.5 and 26.1-26.4 s at 2.0 when the
remembered plans measured inside the window again, but the machine was noisy this time (the
same input measured 27-58 ms within one run): a remembered width plan measured 1.13x warm
after 1.27x cold (so a depth stage ran, on a network never scored: 40 s at 1.2), the
remembered split measured 1.40x warm after 1.54x cold (so all three splits ran again: 177 s
at 1.5). Warm runs are under 30 s only when the measurements repeat.

2026-12-02, `--targets 1.5` alone (scratch script with the same calls; nothing else
running), a fresh cache: 1.60x, cold 702 s (over 10 minutes), warm 47.7 / 230.5 / 34.7 s
(1.66x, 1.46x, 1.62x: the 230 s run's remembered split missed and all three splits ran).
Then each plan's interleaved measurement was cached (LatencyTable.compare): on the same
cache, warm 39.6 s (pairs measured once), 26.5 s, 39.6 s (profiled; its depth stage picked
another plan at the rescaled budget, so it was measured anew: 1.94x), 23.5 s, 22.2 s, all
1.46x but the profiled run. A warm run profiled before the change (34.7 s): 14.4 s timing
three plan pairs, 11.0 s recalibrating the two stages' plans, 3.7 s analyzing two networks,
2.0 s serializing protos (54 calls).

2026-12-02, after a warm run started at the remembered plan itself (search.remembered_start)
and `both` corrected a combination far above the target: the CLI on the zoo ResNet-50 at 224,
`--prune both --speedup 1.5`, a fresh cache, nothing else running: cold 394.5 s (1.49x; the
split of least held-out distortion was width share 1/3), then warm 22.0, 24.8 and 23.8 s, each
1.49x with the cold run's plans. Again from another fresh cache: cold 365.0 s (1.53x, share
2/3), warm 14.9 s (1.53x).

2026-12-02 (later), with channels kept by OBS (27 s of ordering, cached) and width alone as a
fourth split: `--models resnet50 --targets 1.5 --prune both`, a fresh cache, nothing else
running: 1.47x, cold 442 s, warm 12.0 s. The kept split was width alone (held-out distortion
0.00039, against 0.00058 for share 1/2 at 1.53x and 0.0155 for 2/3 at 1.58x; share 1/3's depth
stage could not reach its 1.32x: 1.26x); the warm run replayed it alone.

2026-12-03, with the "apart" column (each output timed again against its input in a fresh
process): `--models resnet18 yolo --targets 1.2 1.5 --prune width`, nothing else running:
ResNet-18 1.17x / 1.52x (apart 1.18x / 1.52x), cold 67 s, warm 3.6 / 3.8 s; YOLO 1.18x /
1.66x (apart 1.18x / 1.65x), cold 36 s, warm 1.9 / 1.8 s. The tool's figures held within 1%.

2026-12-03 (session 2), after the table priced convs as they run inside a network (ORT's NCHWc
reorders at a one-conv model's input and output left out, latency/ort.py) and depth scaled it
to the input's profiled conv time (problem.py), nothing else running, fresh caches. Depth,
targets 1.2 / 1.5 / max (apart in brackets), cold s:
  mobilenet_v2     1.23x (1.20) / 1.51x (1.50) / 8.04x (7.90)                      145 s
  efficientnet_b0  1.26x (1.22) / out of reach (fastest predicted 1.23x, measured 1.23x)  20 s
  mobilenet_v3     1.19x (1.21) / 1.46x (1.43) / 1.46x (1.44)                      14 s
  resnet18         1.21x (1.20) / 1.58x (1.56) / 5.80x (5.73)                      19 s
EfficientNet-B0's fastest plan was predicted at 1.44x before (measured 1.17x): the reorders
made depthwise convs look 2-3x dearer than inside the network; MobileNetV3 now reaches 1.5
(1.46x, inside the window). MobileNetV2's fastest plan: predicted 0.521 ms, measured 0.557
(with the reorders left out but no profile split: predicted 1.590, measured 0.573).
Width, targets 1.2 / 1.5 / 2.0, first-try prediction error (predicted / measured output
ms - 1) and plans measured per target, three runs the same day:
  shares alone, ratio steps:  ResNet-18 +24% / +70% / +126%, MobileNetV2 +16% / +87% / +97%,
    EfficientNet-B0 +88% / +112% / +127%; 36 plans measured; ResNet-18 landed 2.23x for 1.5,
    EfficientNet-B0 1.77x / 2.63x for 1.5 / 2.0 (outside their windows)
  product prediction, interpolating search:  -2% / +9% / +5%, +4% / +22% / +65%,
    +39% / +92% / +95%; 23 plans; every target inside its window
  product + remainder held by volume (now):  +0% / -3% / +17%, -3% / -10% / -28%,
    -7% / -10% / -17%; 18 plans; every target inside its window:
  resnet18         1.23x (1.24) / 1.51x (1.55) / 2.01x (2.02)   1 / 1 / 2 plans   73 s
  mobilenet_v2     1.18x (1.16) / 1.47x (1.50) / 1.96x (1.97)   1 / 4 / 2 plans   78 s
  efficientnet_b0  1.17x (1.18) / 1.47x (1.48) / 1.99x (1.98)   2 / 3 / 2 plans  120 s
(kinds/width/cost.py; warm runs 2.6-6.8 s). The shares under-price a conv narrowed on two
sides; what is left errs the other way, the remainder not all shrinking with the widths.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxmerge import zoo  # noqa: E402
from onnxmerge.api import fuse, time_apart  # noqa: E402
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


def run(model, target, cache, prune="depth"):
    t = time.perf_counter()
    res = compress(model, target, cache_dir=cache, progress=False, kind=prune)
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
    ap.add_argument("--prune", choices=["depth", "width", "both"], default="depth")
    ap.add_argument("--logs", type=Path, help="folder to write each run's log to")
    a = ap.parse_args()
    print(
        "| model | target | measured | apart | ok | changed groups | cold s | warm s | fuse rel |\n"
        "|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for name in a.models:
        model = MODELS[name](a.size)
        cache = tempfile.mkdtemp(prefix=f"onnxmerge-e2e-{name}-")
        for i, target in enumerate(a.targets):
            speedup = target if target == "max" else float(target)
            try:
                res, first = run(model, speedup, cache, a.prune)
                again, warm = run(model, speedup, cache, a.prune)
            except OnnxMergeError as exc:
                print(f"| {name} | {target} | {exc} | | | | | | |", flush=True)
                continue
            if a.logs:
                a.logs.mkdir(parents=True, exist_ok=True)
                for when, r in (("first", res), ("warm", again)):
                    log = a.logs / f"{name}-{a.prune}-{target}-{when}.log"
                    log.write_text("\n".join(r.log) + "\n")
            measured = res.plan.measured_speedup
            t_in, t_out = time_apart([model, res.model])  # the benchmark's own timing
            ok = target == "max" or measured >= float(target) * 0.97
            groups = sum(1 for g in res.plan.groups if g.end - g.start > 1) + len(res.plan.width)
            cold = f"{first:.0f}" if i == 0 else "-"
            check = fuse_check(model, res) if a.prune == "depth" else "-"
            print(
                f"| {name} | {target} | {measured:.2f}x | {t_in / t_out:.2f}x | "
                f"{'yes' if ok else 'NO'} | {groups} | "
                f"{cold} | {warm:.1f} | {check} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
