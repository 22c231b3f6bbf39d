"""Time both depth-compression solvers on synthetic but realistically shaped tables.

Cases:
  (a) a MobileNetV2-sized table: 50 positions with MobileNetV2's breaks and residuals, segments
      up to 8 convs, several pruned variants per segment (~400 entries), default 1000 units;
  (b) a 200-position chain at fine budget resolution (10000 units).

Prints, per case and method, the median wall time of 5 solves. Run: python benchmarks/solve_speed.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxmerge.solve import (  # noqa: E402
    Entry,
    Solution,
    min_latency,
    solve_depth,
    solve_layermerge,
)

RUNS = 5
MAX_SEGMENT = 8


def valid_segments(
    length: int, breaks: set[int], residuals: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Segments that straddle no break and are laminar with every residual, up to MAX_SEGMENT."""
    out = []
    for s in range(length):
        for e in range(s + 1, min(length, s + MAX_SEGMENT) + 1):
            if any(s < b < e for b in breaks):
                continue
            if any(s < p < e < q or p < s < q < e for p, q in residuals):
                continue
            out.append((s, e))
    return out


def make_table(
    rng: random.Random, length: int, breaks: set[int], residuals: list[tuple[int, int]]
) -> tuple[list[Entry], float]:
    """Entries with merge-like latencies and distortion-like importances; returns the original
    network's latency (all singles) too."""
    conv = [rng.uniform(0.05, 0.5) for _ in range(length)]  # ms per original conv
    entries = []
    for s, e in valid_segments(length, breaks, residuals):
        span = e - s
        base = conv[s] if span == 1 else sum(conv[s:e]) * rng.uniform(0.3, 1.1)
        damage = 0.0 if span == 1 else rng.uniform(0.0, 0.02) * (span - 1)
        entries.append(Entry(s, e, base, -damage, key=(s, e, "all")))
        for v in range(rng.randint(1, 4) if span > 1 else 0):
            entries.append(
                Entry(
                    s,
                    e,
                    base * rng.uniform(0.3, 0.9),
                    -damage - rng.uniform(0.005, 0.05),
                    key=(s, e, v),
                    all_kept=False,
                )
            )
    return entries, sum(conv)


def mobilenet_v2(rng: random.Random) -> tuple[int, list[Entry], float]:
    length = 50
    sources = [5, 11, 14, 20, 23, 26, 32, 35, 41, 44]
    entries, original = make_table(rng, length, {5, 11, 20, 41}, [(p, p + 3) for p in sources])
    return length, entries, original


def long_chain(rng: random.Random) -> tuple[int, list[Entry], float]:
    length = 200
    breaks = set(range(0, length, 25)) - {0}
    residuals = [(p, p + 3) for p in range(2, length - 3, 3) if rng.random() < 0.6]
    entries, original = make_table(rng, length, breaks, residuals)
    return length, entries, original


def median_time(call: Callable[[], Solution]) -> tuple[float, Solution]:
    times = []
    solution = None
    for _ in range(RUNS):
        start = time.perf_counter()
        solution = call()
        times.append(time.perf_counter() - start)
    assert solution is not None
    return statistics.median(times), solution


def main() -> None:
    rng = random.Random(0)
    cases = [
        ("(a) MobileNetV2-sized", *mobilenet_v2(rng), 1000, 1.0),
        ("(b) 200-position chain", *long_chain(rng), 10000, 10.0),
    ]
    header = (
        f"{'case':<24}{'method':<12}{'L':>5}{'entries':>9}{'units':>7}"
        f"{'median s':>11}{'target s':>10}  {'budget ms':>10}{'plan ms':>9}{'segs':>6}"
    )
    print("entries: candidates the method uses (depth keeps only all-kept ones, one per segment)")
    print(header)
    print("-" * len(header))
    for name, length, entries, original, units, target in cases:
        # Halfway between the slowest budget the depth method can meet and the original network.
        floor = max(min_latency(length, entries, m) for m in ("layermerge", "depth"))
        budget = floor + 0.5 * (original - floor)
        for method, solver in (("layermerge", solve_layermerge), ("depth", solve_depth)):
            seconds, plan = median_time(partial(solver, length, entries, budget, units=units))
            used = [e for e in entries if method == "layermerge" or e.all_kept]
            flag = "ok" if seconds < target else "SLOW"
            print(
                f"{name:<24}{method:<12}{length:>5}{len(used):>9}{units:>7}"
                f"{seconds:>11.4f}{target:>8.0f} {flag:<4}{budget:>9.2f}{plan.latency:>9.2f}"
                f"{len(plan.segments):>6}"
            )


if __name__ == "__main__":
    main()
