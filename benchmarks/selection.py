"""Which channels a width cut keeps, alone: the same group widths, kept by norm or by OBS.

Between runs of benchmarks/fidelity.py the searches land on other widths, which moves the
agreement more than the choice of channels does. This holds the widths fixed: it compresses
the pretrained MobileNetV2 with `--prune width` at each target (channels kept by weight norm,
`width_selection="norm"`), then rebuilds the plan with `from_plan` keeping, in every cut
group, the channels greedy OBS keeps at the same width (consumers.channel_orders on the
refit's half of the calibration crops, as compress does), and scores both refit networks
against the original on the evaluation photos; each rebuild is timed against the original.

Run: python benchmarks/selection.py [--targets 1.2 1.5] [--calib 64] [--cache DIR]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402

from onnxmerge.analysis import analyze  # noqa: E402
from onnxmerge.calibration.data import calibration_set  # noqa: E402
from onnxmerge.compress import compress, from_plan  # noqa: E402
from onnxmerge.importance import holdout_split  # noqa: E402
from onnxmerge.kinds.width.consumers import channel_orders  # noqa: E402
from onnxmerge.kinds.width.groups import channel_groups  # noqa: E402
from onnxmerge.kinds.width.selection import kept  # noqa: E402


def main() -> None:
    a = realdata.bench_args(__doc__).parse_args()
    model, _, evals, npz, ref = realdata.bench_setup(a.calib, a.eval)
    analysis = analyze(model)
    data = calibration_set(analysis.model, npz, a.calib)
    fit, _ = holdout_split(data.groups)
    feeds = [data.feeds[i] for i in fit]
    groups = {g.id: g for g in channel_groups(analysis.graph, 1)}
    opts = {"calib": npz, "calib_count": a.calib}
    print("| target | channels kept by | groups cut | speedup | top-1 | top-5 | KL |")
    print("|---|---|---|---|---|---|---|")
    for target in a.targets:
        res = compress(model, target, kind="width", width_selection="norm", cache_dir=a.cache,
                       progress=False, **opts)  # fmt: skip
        plan = res.plan
        cut = [groups[wg.id] for wg in plan.width]
        orders = channel_orders(analysis.graph, analysis.reference, cut, feeds)
        obs = replace(plan, width=[replace(wg, kept=list(kept(orders[wg.id], wg.width)))
                                   for wg in plan.width])  # fmt: skip
        for how, p in (("norm", plan), ("OBS", obs)):
            out = from_plan(model, p, **opts)
            got = realdata.agreement(ref, realdata.run_model(out.model, evals))
            speed = f"{out.plan.measured_speedup:.2f}x"
            scores = [f"{got[k]:.2f}" for k in ("top1", "top5_overlap")] + [f"{got['kl']:.3f}"]
            row = [target, how, len(plan.width), speed, *scores]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
