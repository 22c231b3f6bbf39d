"""What `--calib-count` buys: fidelity and tool time at 16, 32 and 64 calibration inputs.

The tool calibrates on `--calib-count` inputs (16 by default), spread over the sources it is
given (calibration.data.quotas). This hands `compress` one .npz of 128 crops of the
benchmark's calibration photos (realdata.CALIB_PHOTOS, scene groups kept) and each count in
turn, as a user passing a folder would, then scores the network it writes against the
original on the evaluation photos. Each count is a cold request for importance (its scores
depend on the inputs) on the same latency tables (--cache: fill them first, e.g. with
fidelity.py, or the first count pays for the tables too).

Run: python benchmarks/calib_count.py [--targets 1.2 1.5] [--counts 16 32 64] [--cache DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402

from onnxmerge.compress import compress  # noqa: E402


def main() -> None:
    ap = realdata.bench_args(__doc__)
    ap.add_argument("--counts", nargs="+", type=int, default=[16, 32, 64])
    ap.add_argument("--kind", default="width")
    a = ap.parse_args()
    model, _, evals, _, ref = realdata.bench_setup(a.calib, a.eval)
    pool = Path(tempfile.mkdtemp(prefix="onnxmerge-calib-count-")) / "pool.npz"
    realdata.save_calibration(pool, realdata.photo_views(realdata.CALIB_PHOTOS, 128, 224, 0))
    print("| target | --calib-count | measured | top-1 | top-5 | KL | tool time |")
    print("|---|---|---|---|---|---|---|")
    for target in a.targets:
        for count in a.counts:
            clock = time.perf_counter()
            res = compress(model, target, kind=a.kind, calib=pool, calib_count=count,
                           cache_dir=a.cache, progress=False)  # fmt: skip
            spent = time.perf_counter() - clock
            m = realdata.agreement(ref, realdata.run_model(res.model, evals))
            cells = [target, count, f"{res.plan.measured_speedup:.2f}x", f"{m['top1']:.2f}",
                     f"{m['top5_overlap']:.2f}", f"{m['kl']:.3f}", f"{spent:.0f} s"]  # fmt: skip
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
