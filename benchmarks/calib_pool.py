"""The calibration photos' effect alone: the same plans refit on fewer or more photos.

Between runs of benchmarks/fidelity.py the searches land on other plans, which moves the
agreement more than the calibration data does. This holds the plans fixed: it compresses the
pretrained MobileNetV2 once per mode (on all of realdata.CALIB_PHOTOS; with fidelity.py's
--cache it reuses that run's tables and remembered plans), then rebuilds each plan with
`from_plan`, refitting on the first N calibration photos for each N in --photos, and scores
every refit against the original on the evaluation photos.

Run: python benchmarks/calib_pool.py [--modes width both] [--target 1.2] [--photos 7 10]
     [--calib 64] [--cache DIR]
Measured 2026-12-02 (2 cores; results/fidelity.md, run F): refit on 10 photos instead of 7,
width's 1.24x plan went from KL 1.106 to 0.919, both's 1.19x plan from 1.460 to 1.079 (and a
1.25x one from 3.066 to 1.853); top-5 rose, top-1 moved either way (0.47 -> 0.41, 0.42 -> 0.40,
0.29 -> 0.37).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402

from onnxmerge.compress import compress, from_plan  # noqa: E402


def calibration_npz(path: Path, photos: tuple[str, ...], count: int) -> Path:
    """`count` views of `photos` with their scene groups, as an --calib .npz."""
    realdata.save_calibration(path, realdata.photo_views(photos, count, 224, 0), photos)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["width", "both"])
    ap.add_argument("--target", type=float, default=1.2)
    ap.add_argument("--photos", nargs="+", type=int, default=[7, len(realdata.CALIB_PHOTOS)])
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--cache", default=None)
    a = ap.parse_args()

    model = realdata.mobilenet_v2_onnx(size=224)
    _, evals = realdata.photo_sets(224, calib=0, eval=100)
    ref = realdata.run_model(model, evals)
    work = Path(tempfile.mkdtemp(prefix="onnxmerge-calib-pool-"))
    full = calibration_npz(work / "all.npz", realdata.CALIB_PHOTOS, a.calib)
    cache = a.cache or str(work / "cache")
    print("| plan | " + " | ".join(f"refit on {n} photos" for n in a.photos) + " |")
    print("|---" * (len(a.photos) + 1) + "|")
    for mode in a.modes:
        res = compress(model, a.target, kind=mode, calib=full, calib_count=a.calib,
                       cache_dir=cache, progress=False)  # fmt: skip
        cells = []
        for n in a.photos:
            npz = calibration_npz(work / f"{n}.npz", realdata.CALIB_PHOTOS[:n], a.calib)
            out = from_plan(model, res.plan, calib=npz, calib_count=a.calib).model
            m = realdata.agreement(ref, realdata.run_model(out, evals))
            cells.append(f"{m['top1']:.2f} top-1, {m['top5_overlap']:.2f} top-5, KL {m['kl']:.3f}")
        speedup = res.plan.measured_speedup
        print(f"| {mode} {speedup:.2f}x | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
