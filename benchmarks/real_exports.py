"""`inspect` and `fuse` on real torchvision / timm models, exported by both torch exporters.

Each model is built with random weights (BatchNorm statistics randomised too, so folding is
not trivial), put in eval mode, and exported at 1x3xSxS with
  * torchscript: torch.onnx.export(..., dynamo=False, opset_version=17), one .onnx file;
  * dynamo:      torch.onnx.export(..., dynamo=True).save(path, external_data=True).
Then onnxmerge.api.inspect and onnxmerge.api.fuse run on the file (from its path, so the
loader reads the external data), and fuse's output is compared with ONNX Runtime on the
exported model (FuseReport.max_rel, random inputs) and with torch's own output (torch rel).

torchvision and timm are not dependencies of onnxmerge (and not in CI). To run this, install
their pure-Python wheels beside the CPU torch, without their CUDA torch requirement:
    pip install --no-deps --target /tmp/tvlib torchvision==<the one matching torch> timm \
        safetensors
    PYTHONPATH=/tmp/tvlib python benchmarks/real_exports.py [--only NAME ...] [--json OUT]
torchvision's C ops do not load against a CPU torch of another build; the model definitions
do not need them, so the script stubs torchvision._meta_registrations before importing it.

Measured 2026-11-22, torch 2.13.0+cpu, torchvision 0.28.0, timm 1.0.29, onnx 1.23.2,
onnxruntime 1.31.1, onnxscript 0.7.2, 2 CPU cores (input 224, random weights). Columns: chains
and residual intervals found by inspect ((exp): the known count), unmatched convs, Conv nodes
before / after fuse, fuse's max relative difference from the exported model in ONNX Runtime,
the fused model against torch itself, seconds (export included):

model                exporter    chains resid (exp) unm convs fused  max rel torch rel     s  error
---------------------------------------------------------------------------------------------------
resnet18             torchscript      2     8     8   0    20    20  0.0e+00   4.0e-07     8
resnet18             dynamo           2     8     8   0    20    20  0.0e+00   4.3e-07    10
resnet50             torchscript      2    16    16   0    53    53  0.0e+00   6.8e-07    13
resnet50             dynamo           2    16    16   0    53    53  0.0e+00   5.4e-07    10
mobilenet_v2         torchscript      1    10    10   0    52    50  2.4e-07   4.0e-07     6
mobilenet_v2         dynamo           1    10    10   0    52    50  2.4e-07   4.7e-07     6
mobilenet_v3_large   torchscript     17     5         0    62    62  0.0e+00   5.4e-07     6
mobilenet_v3_large   dynamo          17     5         0    62    62  0.0e+00   5.1e-07     7
efficientnet_b0      torchscript     33     0         0    81    79  2.5e-07   6.1e-07     7
efficientnet_b0      dynamo          33     0         0    81    79  2.4e-07   6.1e-07     6
regnet_y_400mf       torchscript     33     0         4    85    85  0.0e+00   4.6e-07     6
regnet_y_400mf       dynamo          33     0         4    85    85  0.0e+00   5.1e-07     7
mnasnet1_0           torchscript      1    10         0    52    50  1.7e-07   3.4e-07     2
mnasnet1_0           dynamo           1    10         0    52    50  1.9e-07   2.9e-07     4
vgg11_bn             torchscript      5     0     0   0     8     8  0.0e+00   1.8e-06    49
vgg11_bn             dynamo           5     0     0   0     8     8  0.0e+00   1.9e-06    49
shufflenet_v2_x1_0   torchscript     21     0     0   0    56    37  1.6e-07   3.2e-07     7
shufflenet_v2_x1_0   dynamo          21     0     0   0    56    37  2.3e-07   3.2e-07    13
densenet121          torchscript     62     0     0   0   120   120  0.0e+00   5.0e-07    16
densenet121          dynamo          62     0     0   0   120   120  0.0e+00   4.5e-07    20
convnext_tiny        torchscript     19     0         0    22    22  0.0e+00   1.3e-06    13
convnext_tiny        dynamo          19     0         0    22    22  0.0e+00   1.2e-06    15
squeezenet1_1        torchscript     26     0     0   0    26    26  0.0e+00   1.4e-07     3
squeezenet1_1        dynamo          26     0     0   0    26    26  0.0e+00   2.4e-07     4
googlenet            torchscript     38     0     0   0    57    57  0.0e+00   3.9e-07     6
googlenet            dynamo          38     0     0   0    57    57  0.0e+00   4.5e-07    14
repvgg_a0            torchscript     18    22         0    44    22  2.8e-07   5.5e-07     7
repvgg_a0            dynamo          18    22         0    44    22  3.4e-07   5.5e-07    15
mobileone_s0         torchscript    148    43         0   191   148  3.6e-07   4.2e-07    31
mobileone_s0         dynamo         148    43         0   191   148  2.3e-07   3.6e-07    25
ghostnet_100         torchscript     43     0         0    95    88  2.8e-07   4.9e-07    13
ghostnet_100         dynamo          43     0         0    95    88  2.6e-07   5.4e-07    13

Reading it: both exporters give the same structure everywhere. Squeeze-excitation gating is a
break by design, so a residual whose block holds an SE (MobileNetV3, EfficientNet, RegNetY)
is an Add of a tensor from outside the chain; RegNetY's 4 unmatched convs are the shortcut
convs of such Adds. fuse only merges activation-free runs exactly, so ResNet, VGG, DenseNet
keep every conv; MobileNetV2 / MNASNet / EfficientNet / GhostNet / ShuffleNet merge the
activation-free pairs they have (a linear conv and the unpadded 1x1 after it), RepVGG its
3x3 + 1x1 training branches (44 -> 22) and MobileOne one parallel pair per block (its further
branches and the BatchNorm identity branch are Adds of outside tensors).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxmerge import api  # noqa: E402


def _torchvision():
    # The wheel's C extension does not load against this torch; its fake-op registrations
    # would then fail at import. The model definitions need neither.
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision

    return torchvision


def tv(name: str, **kw):
    def make():
        return getattr(_torchvision().models, name)(weights=None, **kw)

    return make


def timm_model(name: str):
    def make():
        _torchvision()  # timm imports torchvision when it is there
        import timm

        return timm.create_model(name, pretrained=False)

    return make


# name -> (constructor, input size, expected residual intervals or None)
MODELS = {
    "resnet18": (tv("resnet18"), 224, 8),
    "resnet50": (tv("resnet50"), 224, 16),
    "mobilenet_v2": (tv("mobilenet_v2"), 224, 10),
    "mobilenet_v3_large": (tv("mobilenet_v3_large"), 224, None),
    "efficientnet_b0": (tv("efficientnet_b0"), 224, None),
    "regnet_y_400mf": (tv("regnet_y_400mf"), 224, None),
    "mnasnet1_0": (tv("mnasnet1_0"), 224, None),
    "vgg11_bn": (tv("vgg11_bn"), 224, 0),
    "shufflenet_v2_x1_0": (tv("shufflenet_v2_x1_0"), 224, 0),
    "densenet121": (tv("densenet121"), 224, 0),
    "convnext_tiny": (tv("convnext_tiny"), 224, None),
    "squeezenet1_1": (tv("squeezenet1_1"), 224, 0),
    "googlenet": (tv("googlenet", aux_logits=False, init_weights=True), 224, 0),
    "repvgg_a0": (timm_model("repvgg_a0"), 224, None),
    "mobileone_s0": (timm_model("mobileone_s0"), 224, None),
    "ghostnet_100": (timm_model("ghostnet_100"), 224, None),
}
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class Row:
    model: str
    exporter: str
    size: int = 0
    chains: int = 0
    residuals: int = 0
    expected_residuals: int | None = None
    matched: int = 0  # convs in chains (shortcuts included)
    unmatched: int = 0
    convs_before: int = 0
    convs_after: int = 0
    max_rel: float | None = None
    torch_rel: float | None = None
    seconds: float = 0.0
    error: str = ""
    activations: dict = field(default_factory=dict)


def randomise_bn(torch, net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return net


def export(torch, net, x, path: Path, exporter: str) -> None:
    if exporter == "torchscript":
        torch.onnx.export(
            net,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
        )
    else:
        program = torch.onnx.export(net, (x,), dynamo=True)
        program.save(str(path), external_data=True)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def run_one(name: str, exporter: str, folder: Path) -> Row:
    import onnx
    import torch

    from onnxmerge.runtime import run

    make, size, expected = MODELS[name]
    row = Row(name, exporter, size, expected_residuals=expected)
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        net = randomise_bn(torch, make()).eval()
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ref = net(x).numpy()
        path = folder / f"{name}_{exporter}.onnx"
        export(torch, net, x, path, exporter)
        report = api.inspect(path)
        row.chains = report["total"]["chains"]
        row.residuals = report["total"]["residuals"]
        row.matched = report["total"]["convs"] + sum(
            r["shortcut"] is not None for c in report["chains"] for r in c["residuals"]
        )
        row.unmatched = len(report["unmatched"])
        acts: dict[str, int] = {}
        for c in report["chains"]:
            for p in c["positions"]:
                k = p["activation"] or "none"
                acts[k] = acts.get(k, 0) + 1
        row.activations = acts
        out = folder / f"{name}_{exporter}_fused.onnx"
        _, fr = api.fuse(path, out)
        row.convs_before, row.convs_after = fr.convs_before, fr.convs_after
        row.max_rel = fr.max_rel
        fused = onnx.load(str(out))
        feed_name = fused.graph.input[0].name
        got = run(fused, {feed_name: x.numpy()}, [])
        row.torch_rel = rel(ref, got[fused.graph.output[0].name])
    except Exception as exc:  # a row per failure; the traceback goes to stderr
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:150]}"
        traceback.print_exc()
    row.seconds = time.perf_counter() - start
    return row


def table(rows: list[Row]) -> str:
    head = (
        f"{'model':<20} {'exporter':<11} {'chains':>6} {'resid':>5} {'(exp)':>5} "
        f"{'unm':>3} {'convs':>5} {'fused':>5} {'max rel':>8} {'torch rel':>9} {'s':>5}  error"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        exp = "" if r.expected_residuals is None else str(r.expected_residuals)
        mr = "" if r.max_rel is None else f"{r.max_rel:.1e}"
        tr = "" if r.torch_rel is None else f"{r.torch_rel:.1e}"
        lines.append(
            f"{r.model:<20} {r.exporter:<11} {r.chains:>6} {r.residuals:>5} {exp:>5} "
            f"{r.unmatched:>3} {r.convs_before:>5} {r.convs_after:>5} {mr:>8} {tr:>9} "
            f"{r.seconds:>5.0f}  {r.error}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="models to run")
    ap.add_argument("--exporter", choices=EXPORTERS, action="append", help="default: both")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxmerge_real_") as tmp:
        for name in a.only or list(MODELS):
            for exporter in a.exporter or EXPORTERS:
                folder = Path(tmp) / f"{name}_{exporter}"
                folder.mkdir()
                row = run_one(name, exporter, folder)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                for f in folder.iterdir():
                    f.unlink()
                if a.json:
                    a.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    print()
    print(table(rows))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
