"""Dropping dominated candidates (no faster than their convs unmerged) never changes the optimum.

Real chains (ResNet-50 bottlenecks, MobileNetV2 blocks), random integer latencies per merged
geometry and random importances <= 0 (0 for the unchanged convs, which are exact): at every
budget the LayerMerge DP over the filtered candidates reaches the optimum of all of them.
Integer latencies with one budget unit per ms keep the grid exact, so ties are real ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.api import analyze
from onnxmerge.kinds.depth.candidates import dominated, enumerate_candidates
from onnxmerge.solve import Entry, InfeasibleBudget, min_latency, solve


def _problem(model, prune: bool):
    m = analyze(model).match
    chains = {i: mc.chain for i, mc in enumerate(m.chains) if mc.mergeable}
    return chains, enumerate_candidates(chains, prune=prune)


PROBLEMS = {
    "resnet50": lambda: _problem(zoo.resnet(50, width=0.25, size=32), True),
    "mobilenet_v2": lambda: _problem(zoo.mobilenet_v2(width=0.35, size=32), True),
}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request):
    return request.param, *PROBLEMS[request.param]()


def _entries(chains, cands, lat, imp):
    starts = np.cumsum([0] + [ch.length for ch in chains.values()])
    offsets = dict(zip(chains, starts.tolist(), strict=False))
    return [
        Entry(
            int(offsets[c.chain] + c.start),
            int(offsets[c.chain] + c.end),
            lat[c],
            imp[c],
            key=c,
            all_kept=c.all_kept,
        )
        for c in cands
    ]


def _best(total, entries, budget, method):
    try:
        return solve(total, entries, budget, method=method, units=budget).importance
    except InfeasibleBudget:
        return None


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), where=st.floats(0.0, 1.0))
def test_filter_keeps_the_optimum(problem, seed, where):
    _, chains, cands = problem
    method = "layermerge"  # the depth method keeps them (see compress)
    rng = np.random.default_rng(seed)
    # Latencies belong to geometries (signatures), as in the real table. Merged convs are often
    # slower than their parts: draw them from 1 to twice the parts' sum.
    by_sig = {}
    for c in cands:
        if c.unchanged:
            by_sig.setdefault(c.signature, int(rng.integers(1, 20)))
    single = {(c.chain, c.end): by_sig[c.signature] for c in cands if c.unchanged}
    for c in cands:
        parts = sum(single[(c.chain, p)] for p in range(c.start + 1, c.end + 1))
        by_sig.setdefault(c.signature, int(rng.integers(1, 2 * parts + 1)))
    lat = {c: by_sig[c.signature] for c in cands}
    imp = {c: 0.0 if c.unchanged else -float(rng.integers(0, 40)) / 8 for c in cands}
    slow = dominated(cands, by_sig)
    kept = [c for c in cands if c not in slow]
    assert all(not c.unchanged for c in slow)
    total = sum(ch.length for ch in chains.values())
    full, part = _entries(chains, cands, lat, imp), _entries(chains, kept, lat, imp)
    floor = min_latency(total, full, method)
    assert min_latency(total, part, method) == floor
    top = sum(lat[c] for c in cands if c.unchanged)
    budget = int(floor + where * (top - floor)) + 1
    assert _best(total, part, budget, method) == _best(total, full, budget, method)


def test_wide_bottleneck_merges_are_dropped():
    """Timed by MACs, a bottleneck merged into one 3x3 conv (~8x its convs) is dropped; its
    convs alone, and merges of two 1x1 convs with the 3x3 pruned, are not."""
    _, cands = _problem(zoo.resnet(50, width=0.25, size=32), True)
    macs = {}
    for c in cands:
        s = c.signature
        macs[s] = s.in_channels * s.out_channels // s.groups * s.kernel[0] * s.kernel[1]
    slow = dominated(cands, macs)
    assert not any(c.unchanged for c in slow)
    block = [c for c in cands if (c.chain, c.start, c.end) == (1, 0, 3)]  # first bottleneck
    merged = [c for c in block if c.all_kept]
    assert merged and all(c in slow for c in merged)
    assert any(c not in slow for c in block if not c.all_kept)
