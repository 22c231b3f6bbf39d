"""Prefix sharing in merge_segment: composing with a memo gives the same kernels as without."""

from __future__ import annotations

import numpy as np
import pytest

from onnxmerge import zoo
from onnxmerge.api import analyze
from onnxmerge.kinds.depth.candidates import enumerate_candidates
from onnxmerge.kinds.depth.segments import segment_linear


class CountingDict(dict):
    hits = 0

    def __getitem__(self, key):
        CountingDict.hits += 1
        return super().__getitem__(key)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: zoo.resnet(18, width=0.25, size=32), id="resnet18"),
        pytest.param(
            lambda: zoo.mobilenet_v2(width=0.35, size=32), id="mobilenet_v2", marks=pytest.mark.slow
        ),
    ],
)
def test_memo_matches_fresh_composition(model):
    m = analyze(model()).match
    cands = enumerate_candidates(
        {i: mc.chain for i, mc in enumerate(m.chains) if mc.mergeable}, prune=True
    )
    memo = CountingDict()
    CountingDict.hits = 0
    where = None
    for c in sorted(cands, key=lambda c: (c.chain, c.start, c.end, c.kept)):
        if (c.chain, c.start) != where:
            memo.clear()
            where = (c.chain, c.start)
        mc = m.chains[c.chain]
        shared = segment_linear(mc, c.segment, memo)
        fresh = segment_linear(mc, c.segment)
        assert shared.weight.shape == fresh.weight.shape
        assert (shared.stride, shared.pads, shared.groups) == (
            fresh.stride,
            fresh.pads,
            fresh.groups,
        )
        np.testing.assert_allclose(shared.weight, fresh.weight, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(shared.bias, fresh.bias, rtol=1e-12, atol=1e-12)
    assert CountingDict.hits > 0  # the memo was actually used
