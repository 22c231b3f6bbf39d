"""Width and depth together: prune channels first, then make the narrower network shallower.

No published system compresses both ways at once; the two search spaces do not share a
solver (a channel cut changes every merged candidate's conv), so onnxmerge runs them in
sequence, each stage the full single-kind pipeline measured end to end:

1. width (kinds/width) to speedup s ** share (`width_share`, 0.5 by default: half the target
   in log speedup), calibrated toward the original;
2. depth (kinds/depth) on the calibrated pruned network, to what is left of the target,
   s / (the width stage's measured speedup), calibrated toward the pruned network;
3. the result measured once more against the original, in one interleaved run; if it falls
   short of the target's window (each stage can land inside its own and the product still
   miss), the depth stage runs once more for the measured gap and the faster result is kept.

The plan records both (prune "both": `width` and `groups`); `from_plan` replays the stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from onnxmerge.errors import OnnxMergeError
from onnxmerge.result import CompressResult

TOLERANCE = 0.03  # a target counts as reached 3% below it (search.py)


def _stage_options(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in ("model", "speedup", "kind", "plan")}


def compress_both(compress: Callable[..., CompressResult], settings: dict) -> CompressResult:
    """compress(kind="both"): `settings` are compress's arguments. Raises OnnxMergeError
    (with the stage named) when a stage fails."""
    from onnxmerge.compress import parse_speedup

    target = parse_speedup(settings["speedup"])
    share = settings["width_share"]
    if not 0 < share < 1:
        raise OnnxMergeError(f"width share must be in (0, 1), got {share}")
    options = _stage_options(settings)
    first_target = "max" if math.isinf(target) else target**share
    try:
        first = compress(settings["model"], first_target, kind="width", **options)
    except OnnxMergeError as e:
        raise OnnxMergeError(f"width stage: {e}") from None
    reached = first.plan.measured_speedup
    rest = math.inf if math.isinf(target) else target / reached
    if rest <= 1 / (1 - TOLERANCE):
        first.log.append(f"width pruning alone reached {reached:.2f}x: no depth stage")
        return first
    goal = None if math.isinf(target) else target
    result = combine(first, _depth_stage(compress, first, rest, options), settings, goal)
    got = result.plan.measured_speedup
    if goal is not None and got < goal * (1 - TOLERANCE):
        # Two stages each inside their window can multiply to a miss: ask depth for the gap.
        again = rest * goal / got
        retry = combine(first, _depth_stage(compress, first, again, options), settings, goal)
        if retry.plan.measured_speedup > got:
            result = retry
        result.log.append(
            f"width then depth measured {got:.2f}x, short of {goal:.3g}x: depth asked again "
            f"for {again:.2f}x; kept {result.plan.measured_speedup:.2f}x"
        )
    return result


def _depth_stage(compress, first: CompressResult, rest: float, options: dict) -> CompressResult:
    try:
        return compress(first.model, rest, kind="depth", **options)
    except OnnxMergeError as e:
        reached = first.plan.measured_speedup
        raise OnnxMergeError(f"depth stage (after width pruning to {reached:.2f}x): {e}") from None


def from_plan_both(from_plan: Callable[..., CompressResult], settings: dict) -> CompressResult:
    """from_plan of a "both" plan: its width part on the model, its depth part on that."""
    plan = settings["plan"]
    options = _stage_options(settings)
    first = from_plan(settings["model"], replace(plan, prune="width", groups=[]), **options)
    second = from_plan(first.model, replace(plan, prune="depth", width=[]), **options)
    return combine(first, second, settings, plan.target_speedup)


def combine(
    first: CompressResult, second: CompressResult, settings: dict, target: float | None
) -> CompressResult:
    """One result for the two stages, measured against the original in one run."""
    from onnxmerge.calibration.data import calibration_set
    from onnxmerge.compress import _split, _summary
    from onnxmerge.latency import compare_models, get_backend

    be = get_backend(settings["backend"], **(settings["backend_options"] or {}))
    timed, shapes = first.analysis.timing(be.batch)
    t_a, t_b = compare_models(timed, second.model, be, shapes)
    plan = replace(
        second.plan,
        prune="both",
        width=first.plan.width,
        target_speedup=target,
        measured_input_ms=t_a.median_ms,
        measured_output_ms=t_b.median_ms,
        source=first.plan.source,
    )
    calib = calibration_set(
        first.analysis.model, settings["calib"], settings["calib_count"], settings["seed"]
    )
    _, held = _split(calib.feeds, calib.groups)
    log = [f"width: {line}" for line in first.log] + [f"depth: {line}" for line in second.log]
    log.append(
        f"width then depth: measured {t_a.median_ms:.3f} -> {t_b.median_ms:.3f} ms = "
        f"{t_a.median_ms / t_b.median_ms:.2f}x against the original"
    )
    return CompressResult(
        second.model,
        plan,
        first.candidates + second.candidates,
        first.signatures + second.signatures,
        first.latency_hits + second.latency_hits,
        first.latency_new + second.latency_new,
        first.tries + second.tries,
        log,
        second.items,
        first.calibration + second.calibration,
        first.importance_hits + second.importance_hits,
        second.analysis,
        second.kind,
        _summary(first.analysis, second.model, plan, held),
    )
