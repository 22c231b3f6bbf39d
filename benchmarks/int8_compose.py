"""How INT8 composes with onnxmerge: does quantization move a compressed network more than it
moves the original?

For the pretrained MobileNetV2 and its `--prune width` networks at each target, each network
is quantized as benchmarks/fidelity.py does (ONNX Runtime static INT8, QDQ, per-channel, on the
calibration crops) and scored three ways on the evaluation photos: the float network against
the original, the INT8 network against its own float version (what quantization alone costs
it), and the INT8 network against the original (what a user gets).

Run: python benchmarks/int8_compose.py [--targets 1.2 1.5] [--calib 64] [--cache DIR]
Measured 2026-12-02 (2 cores; run J's plans from its cache; KL of INT8 to its own float
network): original 0.109 (top-1 0.82), width 1.18x 0.128 (0.78), width 1.53x 0.189 (0.74).
Against the original, the agreements roughly multiply: width 1.18x 0.74 float, 0.60 INT8.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402
from fidelity import int8  # noqa: E402

from onnxmerge.compress import compress  # noqa: E402


def _cell(m: dict) -> str:
    return f"{m['top1']:.2f}, KL {m['kl']:.3f}"


def main() -> None:
    a = realdata.bench_args(__doc__).parse_args()
    model, calib, evals, npz, ref = realdata.bench_setup(a.calib, a.eval)
    nets = {"original": model}
    for target in a.targets:
        res = compress(model, target, kind="width", calib=npz, calib_count=a.calib,
                       cache_dir=a.cache, progress=False)  # fmt: skip
        nets[f"width {res.plan.measured_speedup:.2f}x"] = res.model
    print("| network | float vs original | INT8 vs its float | INT8 vs original |")
    print("|---|---|---|---|")
    for name, net in nets.items():
        out = realdata.run_model(net, evals)
        quantized = realdata.run_model(int8(net, calib), evals)
        cells = [realdata.agreement(ref, out), realdata.agreement(out, quantized),
                 realdata.agreement(ref, quantized)]  # fmt: skip
        print(f"| {name} | " + " | ".join(map(_cell, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
