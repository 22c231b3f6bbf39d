"""The two stages of `both` as one result: the width stage's channels, the depth stage's
network, measured against the original in one interleaved run (both.py searches; this module
measures and assembles).

The measurement is cached per combined network (LatencyTable.compare, keyed by the input's
digest and the combined model's bytes), so a warm run that builds the same network repeats its
cold run's decision; the distortion that ranks splits is measured on the held-out calibration
sources, as importance scores candidates.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace

from onnxmerge.result import CompressResult

FEEDS = "held_out_feeds"  # the key under which a request's settings keep them (held_out_feeds)
EVALUATION = "evaluation"  # and the inputs the summary scores on (evaluation)
REQUEST_KEYS = (FEEDS, EVALUATION)  # kept in the settings beside compress's arguments


def combine(
    first: CompressResult, second: CompressResult, settings: dict, target: float | None
) -> CompressResult:
    """One result for the two stages, measured against the original in one run."""
    from onnxmerge.summary import summarize

    a_ms, b_ms, cached = timed(first, second.model, settings)
    plan = replace(
        second.plan,
        prune="both",
        width=first.plan.width,
        width_importance=first.plan.width_importance,
        target_speedup=target,
        measured_input_ms=a_ms,
        measured_output_ms=b_ms,
        source=first.plan.source,
    )
    fit, held = held_out_feeds(first.analysis.model, settings)
    log = [f"width: {line}" for line in first.log] + [f"depth: {line}" for line in second.log]
    log.append(
        f"width then depth: measured {a_ms:.3f} -> {b_ms:.3f} ms = {a_ms / b_ms:.2f}x "
        "against the original" + (" (measured before: cache)" if cached else "")
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
        functools.partial(summarize, first.analysis, second.model),
        first.analysis.model,
        (fit, held),
        evaluation(first.analysis.model, settings),
    )


def timed(
    first: CompressResult, model, settings: dict, fresh: bool = False
) -> tuple[float, float, bool]:
    """(the original's ms, `model`'s ms, from the cache): measured interleaved on the
    request's backend, or the pair an earlier run measured for the same bytes
    (LatencyTable.compare) unless `fresh`."""
    from onnxmerge.latency import LatencyTable, get_backend

    be = get_backend(settings["backend"], **(settings["backend_options"] or {}))
    original, shapes = first.analysis.timing(be.batch)
    what = "both " + hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    digest = first.analysis.sha256 if "cache_dir" in settings else None  # None: no cache
    with LatencyTable(settings.get("cache_dir"), be) as table:
        a_ms, b_ms, cached = table.compare(original, model, shapes, digest, what, fresh=fresh)
    return a_ms, b_ms, cached


def held_out_distortion(first: CompressResult, model, settings: dict) -> float:
    """How far `model` moves the original's outputs on the held-out calibration sources
    (all of them when there is one source), as importance scores candidates."""
    from onnxmerge.importance import _distortion
    from onnxmerge.runtime import session

    original = first.analysis.model
    fit, held = held_out_feeds(original, settings)
    feeds = held or fit
    names = [o.name for o in original.graph.output]
    a, b = session(original), session(model)
    return _distortion([a.run(names, f) for f in feeds], [b.run(names, f) for f in feeds])


def held_out_feeds(original, settings: dict) -> tuple[list[dict], list[dict]]:
    """(fit, held-out) calibration feeds of the original, as compress splits them; built
    once per request and kept in `settings` (every split and combination scores on them)."""
    from onnxmerge.calibration.data import calibration_set
    from onnxmerge.compress import _split as split_feeds

    if FEEDS not in settings:
        calib = calibration_set(original, settings["calib"], settings["calib_count"],
                                settings["seed"], settings["preprocess"])  # fmt: skip
        settings[FEEDS] = split_feeds(calib.feeds, calib.groups)
    return settings[FEEDS]


def evaluation(original, settings: dict):
    """calibration.evaluation.deferred for the request, made once and kept in `settings`
    (so `--eval` data is read, and refused, once)."""
    from onnxmerge.calibration.evaluation import deferred

    if EVALUATION not in settings:
        settings[EVALUATION] = deferred(original, settings)
    return settings[EVALUATION]
