"""calibration.baseline: a modified copy's tensors from the original's, against whole runs."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import zoo
from onnxmerge.analysis import analyze
from onnxmerge.calibration.baseline import Baseline
from onnxmerge.calibration.capture import capture
from onnxmerge.calibration.network import refit_merged
from onnxmerge.kinds.width.kind import WidthKind
from onnxmerge.runtime import random_inputs

MODELS = {
    "resnet18": lambda: zoo.resnet(18, width=0.25, size=32),
    "mobilenet_v2": lambda: zoo.mobilenet_v2(width=0.35, size=32),
    "yolo": lambda: zoo.yolo(width=0.25, size=64),
}


@functools.cache
def _setup(name: str):
    analysis = analyze(MODELS[name]())
    kind = WidthKind(align=4, importance="splamp")
    by_group: dict = {}
    for c in kind.candidates(analysis):
        if not c.unchanged:
            by_group.setdefault(c.group, []).append(c)
    feeds = [random_inputs(analysis.reference, seed=s) for s in range(3)]
    return analysis, kind, [by_group[g] for g in sorted(by_group)], feeds


def _cut(analysis, kind, items) -> tuple[onnx.ModelProto, list]:
    return analysis.rewrite(
        lambda g, m, names: kind.apply(g, m, tuple(items), "merged", names), check=False
    )


def _close(a: np.ndarray | list, b: np.ndarray | list) -> None:
    for x, y in zip(np.atleast_1d(a), np.atleast_1d(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 1e-5 * max(np.abs(y).max(), 1e-6)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_a_cut_networks_tensors_equal_a_whole_run(name, data) -> None:
    """Random cuts (1-3 groups, random widths), random tensors of the cut network (graph
    outputs included): the baseline's values equal running the cut network whole."""
    analysis, kind, groups, feeds = _setup(name)
    chosen = data.draw(st.lists(st.sampled_from(range(len(groups))), min_size=1, max_size=3,
                                unique=True))  # fmt: skip
    items = [data.draw(st.sampled_from(groups[g])) for g in chosen]
    model, _ = _cut(analysis, kind, items)
    tensors = [o for n in model.graph.node for o in n.output if o]
    names = data.draw(st.lists(st.sampled_from(tensors), min_size=1, max_size=6, unique=True))
    names += [o.name for o in model.graph.output]
    base = Baseline(analysis.reference, feeds)
    got, want = base.capture(model, names), capture(model, feeds, names)
    for n in names:
        _close(got[n], want[n])
    assert base.changed(model)  # (everything, where the first conv's group is cut)


def test_changed_follows_values_not_only_shapes() -> None:
    """An untouched copy changes nothing; one conv's weights altered in place (same shape)
    change that conv's output and everything downstream, not what lies upstream."""
    analysis, _, _, feeds = _setup("resnet18")
    ref = analysis.reference
    base = Baseline(ref, feeds)
    copy = onnx.ModelProto()
    copy.CopyFrom(ref)
    assert base.changed(copy) == set()
    convs = [n for n in copy.graph.node if n.op_type == "Conv"]
    node = convs[len(convs) // 2]
    w = next(t for t in copy.graph.initializer if t.name == node.input[1])
    value = onnx.numpy_helper.to_array(w) * 1.5
    w.CopyFrom(onnx.numpy_helper.from_array(value, w.name))
    changed = base.changed(copy)
    assert node.output[0] in changed and copy.graph.output[0].name in changed
    assert convs[0].output[0] not in changed
    got = base.capture(copy, [node.output[0], copy.graph.output[0].name])
    want = capture(copy, feeds, [node.output[0], copy.graph.output[0].name])
    for n in want:
        _close(got[n], want[n])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_refit_with_a_baseline_is_the_refit_without(name) -> None:
    """Every group cut to its narrowest width: refitting the consumers from the baseline's
    activations gives the same weights as from whole runs."""
    analysis, kind, groups, feeds = _setup(name)
    items = [min(g, key=lambda c: c.width) for g in groups]
    model, refits = _cut(analysis, kind, items)
    kept = {r.node.name: r.kept_out for r in refits}
    ref = analysis.reference
    a, _ = refit_merged(ref, model, kept, feeds)
    b, _ = refit_merged(ref, model, kept, feeds, baseline=Baseline(ref, feeds))
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    refit = {n.input[1] for n in a.graph.node if n.name in kept}
    assert refit
    for k in refit:
        _close(wb[k], wa[k])


def test_trim_keeps_what_the_last_round_used() -> None:
    analysis, _, _, feeds = _setup("resnet18")
    base = Baseline(analysis.reference, feeds)
    names = [n.output[0] for n in analysis.reference.graph.node[:4]]
    base.tensors(names[:2])
    base.trim()
    base.tensors(names[1:3])
    base.trim()  # names[0] was not asked for since the first trim
    assert set(base._known) == set(names[1:3])
