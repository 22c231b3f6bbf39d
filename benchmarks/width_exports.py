"""Width pruning on convs beyond the 2-D Conv: a 1-D CNN and a UNet, both torch exporters.

Two networks, random weights (BatchNorm statistics randomised), exported at batch 1 by
torch.onnx.export with dynamo=False (torchscript) and dynamo=True:
  * kws: a keyword-spotting-like 1-D CNN over 40 MFCC x 1000 frames (8 Conv1d + BatchNorm +
    ReLU, one depthwise, mean over time, Linear 512 -> 12);
  * unet: a 3-level UNet at 128 x 128 (3x3 conv pairs, MaxPool, ConvTranspose 2x2 stride 2
    up, Concat skips, 1x1 head to 5 classes).
Each is compressed with `--prune width` at 1.5 and at the fastest plan (ort-cpu, 2 threads,
a fresh cache per model), and the output is timed against the input again in a fresh process
(api.time_apart). Columns: the tool's predicted and measured ms, its measured speedup, the
speedup apart, wall seconds.

Run: python benchmarks/width_exports.py [--models kws unet] [--targets 1.5 max]
[--prune width depth both] [--code DIR]
(`--code`: import onnxmerge from DIR instead, e.g. a worktree of an older commit).

Measured 2026-12-03 (2 cores, nothing else running), this code and, with --code, the commit
before 1-D convs and ConvTranspose entered the latency table (9e2e080):

| model | target | predicted ms | measured ms | tool speedup | apart | before: tool / apart |
|---|---|---|---|---|---|---|
| kws torchscript | 1.5 | 1.670 | 1.631 | 1.49x | 1.50x | refused (1-D convs not timed) |
| kws torchscript | max | 0.390 | 0.431 | 5.74x | 5.61x | refused |
| kws dynamo | 1.5 | 1.628 | 1.664 | 1.50x | 1.49x | refused |
| kws dynamo | max | 0.437 | 0.457 | 5.66x | 5.57x | refused |
| unet torchscript | 1.5 | 6.961 | 6.751 | 1.47x | 1.53x | 1.52x / 1.52x |
| unet torchscript | max | 2.500 | 2.781 | 3.76x | 3.81x | 3.80x / 3.76x |
| unet dynamo | 1.5 | 6.827 | 7.197 | 1.49x | 1.44x | 1.56x / 1.56x |
| unet dynamo | max | 2.774 | 2.836 | 3.73x | 3.80x | 3.80x / 3.77x |

Depth and both on the 1-D network since depth merges 1-D convs (passes.lift_1d), 2026-12-03,
`--models kws --prune depth both` (before, depth found no chain: each Conv1d stood alone):

| model | prune | target | predicted ms | measured ms | tool speedup | apart | wall s |
|---|---|---|---|---|---|---|---|
| kws torchscript | depth | 1.5 | 2.079 | 1.515 | 1.47x | 1.47x | 8 |
| kws torchscript | depth | max | 0.611 | 0.481 | 4.67x | 4.68x | 1 |
| kws torchscript | both | 1.5 | 1.928 | 1.345 | 1.72x | 1.68x | 62 |
| kws torchscript | both | max | 0.197 | 0.144 | 15.74x | 16.02x | 8 |
| kws dynamo | depth | 1.5 | 2.242 | 1.728 | 1.48x | 1.50x | 8 |
| kws dynamo | depth | max | 0.667 | 0.510 | 4.82x | 4.82x | 1 |
| kws dynamo | both | 1.5 | 2.017 | 1.362 | 1.64x | 1.63x | 59 |
| kws dynamo | both | max | 0.179 | 0.132 | 18.76x | 18.36x | 7 |

The prediction runs high: the input is timed as exported (1-D convs), the candidates as the
2-D convs they become, which ONNX Runtime runs faster. Random weights: the summary's fidelity
(R² over random fields) says little here.

Wall: 36-42 s per network at 1.5 (cold cache, its latency table included), 2-6 s at max.
Pricing the UNet's two ConvTranspose (2x2, stride 2: a small part of its time) changed
neither its fastest plan nor how close a target lands; the 1-D network, refused before, now
lands within 1% of 1.5x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("kws", "unet")


def _torch_models():
    import torch
    from torch import nn

    def bn_relu(conv, c, dims):
        bn = nn.BatchNorm1d(c) if dims == 1 else nn.BatchNorm2d(c)
        return nn.Sequential(conv, bn, nn.ReLU())

    def c1(i, o, k=3, s=1, g=1):
        return bn_relu(nn.Conv1d(i, o, k, s, k // 2, groups=g, bias=False), o, 1)

    def c2(i, o):
        return bn_relu(nn.Conv2d(i, o, 3, padding=1, bias=False), o, 2)

    class Kws(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(c1(40, 128, 5, 2), c1(128, 128), c1(128, 256, 3, 2),
                                   c1(256, 256, 3, 1, 256), c1(256, 256, 1), c1(256, 256),
                                   c1(256, 512, 3, 2), c1(512, 512))  # fmt: skip
            self.head = nn.Linear(512, 12)

        def forward(self, x):
            return self.head(self.f(x).mean(-1))

    class UNet(nn.Module):
        def __init__(self, c=32):
            super().__init__()
            self.e1 = nn.Sequential(c2(3, c), c2(c, c))
            self.e2 = nn.Sequential(c2(c, 2 * c), c2(2 * c, 2 * c))
            self.e3 = nn.Sequential(c2(2 * c, 4 * c), c2(4 * c, 4 * c))
            self.pool = nn.MaxPool2d(2)
            self.u2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
            self.d2 = nn.Sequential(c2(4 * c, 2 * c), c2(2 * c, 2 * c))
            self.u1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
            self.d1 = nn.Sequential(c2(2 * c, c), c2(c, c))
            self.head = nn.Conv2d(c, 5, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(self.pool(a))
            m = self.e3(self.pool(b))
            y = self.d2(torch.cat([self.u2(m), b], 1))
            return self.head(self.d1(torch.cat([self.u1(y), a], 1)))

    torch.manual_seed(0)
    out = {}
    for name, net, shape in (("kws", Kws(), (1, 40, 1000)), ("unet", UNet(), (1, 3, 128, 128))):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
        out[name] = (net.eval(), torch.randn(*shape))
    return out


def export(folder: Path, names) -> dict[str, Path]:
    """Each model by both exporters: {"kws torchscript": path, ...}."""
    import torch

    paths = {}
    for name, (net, x) in _torch_models().items():
        if name not in names:
            continue
        for exporter in ("torchscript", "dynamo"):
            path = folder / f"{name}_{exporter}.onnx"
            if exporter == "dynamo":
                torch.onnx.export(net, (x,), str(path), dynamo=True).save(
                    str(path), external_data=True
                )
            else:
                torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)
            paths[f"{name} {exporter}"] = path
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--targets", nargs="+", default=["1.5", "max"])
    ap.add_argument("--prune", nargs="+", default=["width"], choices=("width", "depth", "both"))
    ap.add_argument("--code", default=str(Path(__file__).resolve().parents[1]))
    a = ap.parse_args()
    sys.path.insert(0, a.code)
    from onnxmerge.api import time_apart
    from onnxmerge.compress import compress
    from onnxmerge.errors import OnnxMergeError

    work = Path(tempfile.mkdtemp(prefix="onnxmerge-width-exports-"))
    paths = export(work, a.models)
    print("| model | prune | target | predicted ms | measured ms | tool speedup | apart | wall s | "
          "fidelity (summary) |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for label, path in paths.items():
        cache = work / f"cache-{label.replace(' ', '-')}"
        for kind, target in ((k, t) for k in a.prune for t in a.targets):
            speedup = target if target == "max" else float(target)
            t = time.perf_counter()
            try:
                res = compress(str(path), speedup, kind=kind, cache_dir=cache, progress=False)
            except OnnxMergeError as exc:
                print(f"| {label} | {kind} | {target} | {exc} | | | | | |", flush=True)
                continue
            wall = time.perf_counter() - t
            p = res.plan
            tool = p.measured_input_ms / p.measured_output_ms
            before, after = time_apart([str(path), res.model])
            fid = res.summary(quiet=True)[-1].split(": ", 1)[-1]  # the fidelity line's figures
            print(f"| {label} | {kind} | {target} | {p.predicted_ms:.3f} | "
                  f"{p.measured_output_ms:.3f} | {tool:.2f}x | {before / after:.2f}x | "
                  f"{wall:.0f} | {fid} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
