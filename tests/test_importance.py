"""Importance: the suffix fast path agrees with scoring each whole swapped network."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from onnxmerge import zoo
from onnxmerge.api import analyze
from onnxmerge.calibration.data import calibration_inputs
from onnxmerge.importance import Job, _distortion, importance_table
from onnxmerge.kinds.depth.candidates import enumerate_candidates
from onnxmerge.kinds.depth.segments import segment_io, segment_linear
from onnxmerge.runtime import session

MODELS = {
    "resnet18": lambda: zoo.resnet(18, width=0.25, size=32),
    "mobilenet_v2": lambda: zoo.mobilenet_v2(width=0.35, size=32),
    "yolo": lambda: zoo.yolo(size=64),  # several outputs, heads that are graph outputs
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("calibrate", [False, True])
def test_suffix_path_matches_whole_network_scoring(name, calibrate):
    model = MODELS[name]()
    analysis = analyze(model)
    base, m = analysis.reference, analysis.match
    cands = enumerate_candidates(
        {i: mc.chain for i, mc in enumerate(m.chains) if mc.mergeable}, prune=True
    )
    rng = np.random.default_rng(0)
    picked = [c for c in cands if not c.unchanged]
    picked = [picked[i] for i in rng.choice(len(picked), min(12, len(picked)), replace=False)]
    jobs = []
    for c in picked:
        mc = m.chains[c.chain]
        src, dst = (t.name for t in segment_io(mc, c.start, c.end))
        jobs.append(Job(c, src, dst, lambda mc=mc, c=c: segment_linear(mc, c.segment)))
    feeds = calibration_inputs(model, None, 4)
    fast = importance_table(base, feeds, jobs, calibrate=calibrate, progress=False)
    scored = feeds[1::2] if calibrate else feeds  # a refit is scored on held-out feeds
    ref = [session(base).run(None, f) for f in scored]

    def kl(swapped):
        s = session(swapped)
        return _distortion(ref, [s.run(None, f) for f in scored])

    slow = importance_table(
        base, feeds, jobs, calibrate=calibrate, distortion_fn=kl, progress=False
    )
    gc.collect()
    for job in jobs:
        assert fast[job.key] <= 0
        np.testing.assert_allclose(fast[job.key], slow[job.key], rtol=1e-3, atol=1e-7)
    # Not all the same number: the scores tell candidates apart.
    assert len({round(v, 9) for v in fast.values()}) > 1
