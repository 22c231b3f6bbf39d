"""Importance: the suffix fast path agrees with scoring each whole swapped network."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import zoo
from onnxmerge.api import analyze
from onnxmerge.calibration.data import calibration_inputs
from onnxmerge.importance import Job, _distortion, importance_table
from onnxmerge.kinds.depth.candidates import enumerate_candidates
from onnxmerge.kinds.depth.segments import segment_io, segment_linear
from onnxmerge.runtime import session


def anchors_model() -> onnx.ModelProto:
    """conv -> relu -> conv -> relu -> conv, plus a grid made from the input's shape (h x w,
    no batch axis, like a detector's anchors) added at the end; height and width dynamic."""
    rng = np.random.default_rng(0)
    w = [rng.standard_normal(s).astype(np.float32) / 3 for s in [(8, 3, 3, 3), (8, 8, 3, 3),
                                                                 (8, 8, 1, 1)]]  # fmt: skip
    inits = [numpy_helper.from_array(v, f"w{i}") for i, v in enumerate(w)]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("s0", [2]), ("s1", [4]), ("axis", 0))]  # fmt: skip
    h = helper
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["a"], "c0", pads=[1] * 4),
        h.make_node("Relu", ["a"], ["ar"], "r0"),
        h.make_node("Conv", ["ar", "w1"], ["b"], "c1", pads=[1] * 4),
        h.make_node("Relu", ["b"], ["br"], "r1"),
        h.make_node("Conv", ["br", "w2"], ["c"], "c2"),
        h.make_node("Shape", ["x"], ["shape"], "shape"),
        h.make_node("Slice", ["shape", "s0", "s1"], ["hw"], "hw"),
        h.make_node("ConstantOfShape", ["hw"], ["ones"], "ones",
                    value=numpy_helper.from_array(np.array([0.5], np.float32))),
        h.make_node("CumSum", ["ones", "axis"], ["grid"], "grid"),  # row r holds 0.5 (r + 1)
        h.make_node("Add", ["c", "grid"], ["y"], "add"),
    ]  # fmt: skip
    graph = h.make_graph(
        nodes,
        "anchors",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h", "w"])],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


MODELS = {  # name -> (model, input shapes for dynamic inputs)
    "resnet18": lambda: (zoo.resnet(18, width=0.25, size=32), None),
    "mobilenet_v2": lambda: (zoo.mobilenet_v2(width=0.35, size=32), None),
    "yolo": lambda: (zoo.yolo(size=64), None),  # several outputs, heads that are graph outputs
    # A tensor without a batch axis feeds the rest of the network (the suffix models):
    "anchors": lambda: (anchors_model(), {"x": (1, 3, 12, 16)}),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("calibrate", [False, True])
def test_suffix_path_matches_whole_network_scoring(name, calibrate):
    model, shapes = MODELS[name]()
    analysis = analyze(model, shapes)
    model = analysis.model
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


def test_nothing_to_score_is_an_empty_table():
    # Every candidate cached (or none changes the network): no capture, no split, no error.
    analysis = analyze(zoo.resnet(18, width=0.25, size=32))
    feeds = calibration_inputs(analysis.model, None, 4)
    assert importance_table(analysis.reference, feeds, [], calibrate=True, progress=False) == {}
