"""Width and depth together: prune channels first, then make the narrower network shallower.

No published system compresses both ways at once; the two search spaces do not share a
solver (a channel cut changes every merged candidate's conv), so onnxmerge runs them in
sequence, each stage the full single-kind pipeline measured end to end:

1. width (kinds/width) to speedup s ** share, calibrated toward the original (when even
   width's fastest plan is too slow for that, errors.OutOfReach, to what it can give);
2. depth (kinds/depth) on the calibrated pruned network, to what is left of the target,
   s / (the width stage's measured speedup), calibrated toward the pruned network; when even
   depth's fastest plan is too slow for that (errors.OutOfReach: few mergeable chains, as in
   ResNet-50), width is asked once more, for the target over what depth can give, and 2 runs
   again;
3. the result measured against the original, in one interleaved run; outside the target's
   window (search.py: 3% below to 15% above; each stage can land inside its own and the
   product still miss), it is measured once more, then depth runs again for the gap.

The split is searched (`width_share="auto"`, the default): the shares in SHARES (a third,
half and two thirds of the target in log speedup asked of width, and all of it: width alone,
no depth stage) are each run through 1-3, and the one whose result moves the original's
outputs least on the held-out calibration sources (importance.output_distortion, the measure
the solvers minimise) is kept, among those that reach the target (none: an error, as for one
kind). Width alone is a candidate because on a network whose activations carry its function
(the pretrained MobileNetV2: benchmarks/results/fidelity.md run H, 0.41 top-1 agreement for
width alone at 1.5x against 0.20 for the best mixed split) any depth stage costs more than the
channels it spares; with it, `both` is never worse than `--prune width` by its own measure. A
number in (0, 1] fixes the share. Width importances and latencies are cached, so the extra
splits cost mostly their depth stages.
The share kept is remembered in the cache folder (memory.RequestMemory, keyed by the model's
bytes, the target and every option): a later run of the same request runs that split alone,
and searches all of them again only if it no longer reaches the target. With the share, the
channels its width stage kept and what its depth stage was asked are remembered: when the
width stage keeps the same channels again, depth is asked the same (so it starts at its own
remembered budget), whatever this run's timing of the width plan says.

A model that offers one kind nothing to remove (no prunable channel group, no mergeable conv
chain: errors.NothingToRemove) gets the other kind alone for the whole target, and its plan
says so (prune "width" or "depth").

The plan records both (prune "both": `width` and `groups`); `from_plan` replays the stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import replace

from onnxmerge import combined
from onnxmerge.analysis import analyze
from onnxmerge.combined import combine, held_out_distortion
from onnxmerge.combined import timed as _timed
from onnxmerge.errors import NothingToRemove, OnnxMergeError, OutOfReach
from onnxmerge.memory import RequestMemory
from onnxmerge.result import CompressResult
from onnxmerge.search import NOISE as TOLERANCE  # a target counts as reached 3% below it
from onnxmerge.search import in_window  # ... and up to 15% above it

SHARES = (1 / 3, 1 / 2, 2 / 3, 1.0)  # width's shares of the target (log speedup) "auto" tries


# A split's own error ends as a whole run's would; the run goes on, so that advice is dropped.
_NOTHING_WRITTEN = re.compile(r"[;,]? nothing written( \(try [^)]*\))?$")


def _stage_options(settings: dict) -> dict:
    return {
        k: v
        for k, v in settings.items()
        if k not in ("model", "speedup", "kind", "plan", "eval_data", *combined.REQUEST_KEYS)
    }


def compress_both(
    compress: Callable[..., CompressResult], settings: dict, memory: RequestMemory | None = None
) -> CompressResult:
    """compress(kind="both"): `settings` are compress's arguments; `memory` remembers the
    share an "auto" search kept. A model with nothing to remove for one kind (no prunable
    channel group, no mergeable conv chain) gets the other kind alone, for the whole target.
    Raises OnnxMergeError (with the stage named) when a stage fails, or every split of an
    "auto" search does."""
    try:
        result = _search_splits(compress, settings, memory)
    except NothingToRemove as e:
        other = "depth" if e.kind == "width" else "width"
        options = _stage_options(settings)
        result = compress(settings["model"], settings["speedup"], kind=other, **options)
        result.log.append(f"{e.kind}: {e}; {other} pruning alone")
    if combined.EVALUATION in settings:  # --eval's, read once (a width-alone split's result
        result.evaluation = settings[combined.EVALUATION]  # was made without it)
        result.__dict__.pop("scored", None)
    return result


def check_both(settings: dict) -> dict:
    """Refuse a bad model or option once, in its own words, before any split runs (inside a
    split the error would be a stage's, repeated for each split). Returns the settings every
    split runs with: the model analyzed (compress takes an Analysis as its model) and the
    held-out calibration feeds, built once."""
    from onnxmerge.compress import _kind_options, parse_speedup
    from onnxmerge.kinds import get_kind

    for kind in ("width", "depth"):
        get_kind(kind, **_kind_options({**settings, "kind": kind}))
    split_shares(settings["width_share"], parse_speedup(settings["speedup"]))
    analysis = analyze(settings["model"], settings["input_shapes"],
                       settings["external_data_dir"], settings["keep"])  # fmt: skip
    stages = {**settings, "model": analysis}
    combined.held_out_feeds(analysis.model, stages)  # bad calibration data: its error, once
    combined.evaluation(analysis.model, stages)  # and bad --eval data
    return stages


def _search_splits(compress, settings: dict, memory: RequestMemory | None) -> CompressResult:
    from onnxmerge.compress import parse_speedup

    target = parse_speedup(settings["speedup"])
    shares = split_shares(settings["width_share"], target)
    options = _stage_options(settings)
    recalled = _recall(memory) if memory is not None and len(shares) > 1 else None
    remembered = recalled["share"] if recalled else None
    if remembered is not None:  # an earlier run's choice runs first, and alone if it reaches
        shares = (remembered, *(s for s in shares if s != remembered))
    tried, failed, kept, short = [], [], {}, 0
    for share in shares:
        replay = recalled if share == remembered else None
        try:
            first, result, rest = _split(compress, settings, options, target, share, replay)
        except NothingToRemove:
            raise
        except OnnxMergeError as e:
            if len(shares) == 1:
                raise
            failed.append(f"{_label(share)}: {_NOTHING_WRITTEN.sub('', str(e))}")
            short += isinstance(e, OutOfReach)
            continue
        kept[id(result)] = {"share": share, "width": _width_key(first), "rest": rest}
        if share == remembered and result.plan.measured_speedup >= target * (1 - TOLERANCE):
            result.log.append(
                f"split: {_label(share)}, the one an earlier run of this request "
                "kept (cache); pass --width-share to choose another"
            )
            memory.put(kept[id(result)])  # this run's width plan and depth request
            return result
        tried.append((share, result, held_out_distortion(first, result.model, settings)))
    if not tried and short == len(failed):  # one reason, said once (not once per split)
        raise OnnxMergeError(
            f"speedup {target:.3g} is out of reach for width and depth together: every split's "
            "fastest plan measured short of it; nothing written (try a smaller --speedup, or "
            "--speedup max)"
        )
    if not tried:
        causes = {line.split(": ", 1)[-1] for line in failed}
        if len(causes) == 1:  # the same cause for every split (an option the backend lacks)
            raise OnnxMergeError(f"every split of width and depth failed: {causes.pop()}")
        raise OnnxMergeError("every split of width and depth failed: " + "; ".join(failed))
    best = _pick(tried, failed, target)
    if memory is not None:
        memory.put(kept[id(best)])
    if isinstance(best, CompressResult):  # the report counts what every split measured
        for name in ("latency_hits", "latency_new", "importance_hits", "tries"):
            setattr(best, name, sum(getattr(r, name) for _, r, _ in tried))
    return best


def split_shares(width_share: float | str, target: float) -> tuple[float, ...]:
    """The shares to try: SHARES for "auto" (one, 0.5, for "max"), else the number given."""
    if width_share == "auto":
        return (0.5,) if math.isinf(target) else SHARES
    try:
        share = float(width_share)
    except (TypeError, ValueError):
        raise OnnxMergeError(
            f'width share must be "auto" or a number, got {width_share!r}'
        ) from None
    if not 0 < share <= 1:
        raise OnnxMergeError(f"width share must be in (0, 1], got {width_share}")
    return (share,)


def _label(share: float) -> str:
    """How the log names a split."""
    return "width alone" if share >= 1 else f"width share {share:.2f}"


def _recall(memory: RequestMemory) -> dict | None:
    """What an earlier run kept: {"share", "width" (its width plan, _width_key), "rest" (what
    its depth stage was asked)}; a bare share from an older cache."""
    value = memory.get()
    if isinstance(value, float):
        return {"share": value, "width": None, "rest": None}
    return value if isinstance(value, dict) and "share" in value else None


def _width_key(first: CompressResult) -> str:
    """Which channels the width stage kept, as a short digest."""
    kept = [[g.id, list(g.kept)] for g in first.plan.width]
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def _split(
    compress, settings: dict, options: dict, target: float, share: float, replay=None
) -> tuple[CompressResult, CompressResult, float | None]:
    """(the width stage's result, the combined result, what depth was asked) for one share of
    the target. A depth stage that cannot reach what is left (errors.OutOfReach: even its
    fastest plan is too slow) sends width back, once, for what depth cannot give. `replay`
    (_recall): when the width stage kept the channels an earlier run kept, depth is asked
    what it was asked then (the same request: its remembered budget, the same network), not
    the target over this run's timing of the same width plan, which moves by 10% between
    runs on a loaded machine."""
    goal = None if math.isinf(target) else target
    first = _width_first(compress, settings, options, goal, share)
    retried = False
    while True:
        reached = first.plan.measured_speedup
        rest = math.inf if goal is None else target / reached
        if replay and replay["rest"] and not retried and _width_key(first) == replay["width"]:
            rest = replay["rest"]
            first.log.append(
                f"the width plan an earlier run of this request kept (cache): depth asked "
                f"for {rest:.3f}x as then (measured {target / reached:.3f}x left now)"
            )
        if share >= 1 or rest <= 1 / (1 - TOLERANCE):
            first.log.append(f"width pruning alone reached {reached:.2f}x: no depth stage")
            first.plan = replace(first.plan, target_speedup=target)  # the request's
            return first, first, None
        try:
            second = _depth_stage(compress, first, rest, options)
            break
        except NothingToRemove:
            raise
        except OutOfReach as e:  # depth gives at most e.fastest here: width does the rest
            more = target / (e.fastest * (1 - 2 * TOLERANCE))
            if retried or more <= reached:
                raise
            retried = True
            first = _width_stage(compress, settings, options, more)
            first.log.append(
                f"depth could give at most {e.fastest:.2f}x after width pruning to "
                f"{reached:.2f}x: width asked again, for {more:.2f}x"
            )
        except OnnxMergeError as e:
            if goal is not None:
                raise
            # "max": a narrower network whose merges are no faster than its convs keeps width.
            message = str(e).removesuffix("; nothing written")
            first.log.append(f"{message}; kept width pruning alone")
            return first, first, None
    result = combine(first, second, settings, goal)
    if goal is not None and not in_window(result.plan.measured_speedup, goal):
        result = _measured_again(first, result, settings, goal)
    got = result.plan.measured_speedup
    if goal is not None and not in_window(got, goal):
        # Two stages each inside their window can multiply to a miss: ask depth for the gap.
        result, rest = _depth_again(compress, first, result, rest, settings, options, goal)
    return first, result, rest


def _width_first(compress, settings: dict, options: dict, goal: float | None, share: float):
    """The width stage of a split: width asked for goal ** share ("max": its fastest). When
    that is out of reach (errors.OutOfReach: even width's fastest plan is slower), width is
    asked once more, for what it can give, and depth gets the rest (the mirror of a depth
    stage out of reach); width alone (share 1) has no depth stage to give it to."""
    if goal is None:
        return _width_stage(compress, settings, options, "max")
    try:
        return _width_stage(compress, settings, options, goal**share)
    except OutOfReach as e:
        less = e.fastest * (1 - TOLERANCE)
        if share >= 1 or less <= 1 / (1 - TOLERANCE):
            raise
        first = _width_stage(compress, settings, options, less)
        first.log.append(
            f"width could give at most {e.fastest:.2f}x of the {goal**share:.2f}x asked: "
            f"width asked again, for {less:.2f}x, depth for the rest"
        )
        return first


def _depth_again(compress, first, result, rest: float, settings, options, goal: float):
    """(result, what depth was asked) after the combination measured outside the window:
    depth is asked again for the measured miss (rest * goal / measured), or for half of an
    overshoot (as a ratio, as search.py gives half of it back). Short of the goal the faster
    of the two is kept; far above it (removing more than asked costs fidelity) the second only
    if it lands inside the window, nearer the goal."""
    got = result.plan.measured_speedup
    short = got < goal
    again = rest * goal / got if short else rest * math.sqrt(goal / got)
    if not short and again <= 1 / (1 - TOLERANCE):
        result.log.append(
            f"width then depth measured {got:.2f}x, above {goal:.3g}x, but depth would be "
            f"asked for {again:.2f}x, too little to measure: kept"
        )
        return result, rest
    try:
        retry = combine(first, _depth_stage(compress, first, again, options), settings, goal)
    except OnnxMergeError as e:
        if short:
            raise
        result.log.append(f"depth asked again for {again:.2f}x failed ({e}): kept {got:.2f}x")
        return result, rest
    measured = retry.plan.measured_speedup
    better = measured > got if short else in_window(measured, goal) and measured < got
    kept, kept_rest = (retry, again) if better else (result, rest)
    kept.log.append(
        f"width then depth measured {got:.2f}x, {'short of' if short else 'above'} "
        f"{goal:.3g}x: depth asked again for {again:.2f}x; kept "
        f"{kept.plan.measured_speedup:.2f}x"
    )
    return kept, kept_rest


def _measured_again(first: CompressResult, result: CompressResult, settings: dict, goal: float):
    """`result`, measured once more against the original before a miss sends depth again
    (a depth stage costs far more than a timing, and one timing on a loaded machine can
    miss by 10%): the second timing if it lands inside the window, else the mean of the two."""
    a_ms, b_ms, _ = _timed(first, result.model, settings, fresh=True)
    p = result.plan
    if not in_window(a_ms / b_ms, goal):
        a_ms, b_ms = (a_ms + p.measured_input_ms) / 2, (b_ms + p.measured_output_ms) / 2
    result.log.append(
        f"width then depth measured again: {a_ms:.3f} -> {b_ms:.3f} ms = {a_ms / b_ms:.2f}x"
    )
    result.plan = replace(p, measured_input_ms=a_ms, measured_output_ms=b_ms)
    return result


def _pick(tried: list, failed: list[str], target: float) -> CompressResult:
    """The least distorting split that reaches the target (the fastest for "max"); logs them
    all. Raises OnnxMergeError when none reaches it, as a single kind's search does."""
    if math.isinf(target):
        reached = [max(tried, key=lambda t: t[1].plan.measured_speedup)]
    else:
        reached = [t for t in tried if t[1].plan.measured_speedup >= target * (1 - TOLERANCE)]
    if not reached:
        fastest = max(t[1].plan.measured_speedup for t in tried)
        raise OnnxMergeError(
            f"speedup {target:.3g} not reached by width and depth together: best measured "
            f"{fastest:.2f}x over {len(tried)} split(s); nothing written (try a smaller --speedup)"
        )

    def rank(t) -> tuple[float, float]:  # equal distortion (the same network built twice):
        miss = 0.0 if math.isinf(target) else math.log(t[1].plan.measured_speedup / target)
        return t[2], abs(miss)  # the speedup nearest the target

    best = min(reached, key=rank)[1]
    if len(tried) + len(failed) > 1:
        if best.plan.prune == "both":  # (width alone has no such lines: its own are above)
            best.log.insert(0, "the width: and depth: lines are the kept split's (the last)")
        for share, res, d in tried:
            mark = "kept" if res is best else ""
            best.log.append(
                f"split: {_label(share)} -> {res.plan.measured_speedup:.2f}x, "
                f"held-out distortion {d:.4g} {mark}".rstrip()
            )
        best.log.extend(f"split failed: {line}" for line in failed)
        best.log.append(
            "  (held-out distortion: what the search minimises, KL or each output channel's "
            "squared error relative to its energy, averaged; the summary's relative error is "
            "the whole tensor's)"
        )
    return best


@contextlib.contextmanager
def _stage(name: str):
    """A stage's errors carry its name; NothingToRemove and OutOfReach keep their type (the
    callers act on them)."""
    try:
        yield
    except NothingToRemove:
        raise
    except OnnxMergeError as e:
        if isinstance(e, OutOfReach):
            raise OutOfReach(e.fastest, f"{name}: {e}") from None
        raise OnnxMergeError(f"{name}: {e}") from None


def _width_stage(compress, settings: dict, options: dict, speedup) -> CompressResult:
    with _stage("width stage"):
        return compress(settings["model"], speedup, kind="width", **options)


def _depth_stage(compress, first: CompressResult, rest: float, options: dict) -> CompressResult:
    with _stage(f"depth stage (after width pruning to {first.plan.measured_speedup:.2f}x)"):
        return compress(first.model, rest, kind="depth", **options)


def from_plan_both(from_plan: Callable[..., CompressResult], settings: dict) -> CompressResult:
    """from_plan of a "both" plan: its width part on the model, its depth part on that."""
    plan = settings["plan"]
    options = _stage_options(settings)
    first = from_plan(settings["model"], replace(plan, prune="width", groups=[]), **options)
    second = from_plan(first.model, replace(plan, prune="depth", width=[]), **options)
    return combine(first, second, settings, plan.target_speedup)
