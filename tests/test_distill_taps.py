"""onnxmerge.distill_taps: the tensors local distillation matches, and their channels.

The channel map is checked where it must be exact: a teacher whose pruned channels are
silenced (zero rows, test_width_groups) and the student with them removed agree on every
matched tensor, cut to the kept channels, under the torch interpreter and ONNX Runtime.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_width_groups import ZOO, _choose, _zero

from onnxmerge import zoo
from onnxmerge.analysis import analyze
from onnxmerge.distill_taps import candidates, channel_index, kept_channels, teacher_part
from onnxmerge.kinds.width.groups import channel_groups
from onnxmerge.passes.prune_channels import prune_channels

torch = pytest.importorskip("torch")
distill_mod = pytest.importorskip("onnxmerge.distill")


@settings(max_examples=100, deadline=None)
@given(
    channels=st.integers(1, 40),
    cuts=st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 12), st.integers(0, 2**12)), max_size=4
    ),  # fmt: skip
)
def test_channel_index_keeps_the_uncovered_and_the_kept_in_order(channels, cuts):
    segments, covered = [], np.zeros(channels, bool)
    for start, size, bits in cuts:  # disjoint segments, each keeping a random subset
        end = min(start + size, channels)
        if start >= end or covered[start:end].any():
            continue
        covered[start:end] = True
        kept = [start + i for i in range(end - start) if bits >> i & 1]
        segments.append((start, end, kept))
    index = channel_index(channels, segments)
    mask = ~covered
    for _, _, kept in segments:
        mask[kept] = True
    np.testing.assert_array_equal(index, np.flatnonzero(mask))  # in order, each once


def test_kept_channels_offsets_group_indices_by_the_member_start():
    width = [
        SimpleNamespace(members=[["a", 0, 4], ["cat", 4, 8]], kept=[0, 3]),
        SimpleNamespace(members=[["cat", 0, 4]], kept=[1, 2]),
    ]
    got = kept_channels(width)
    assert got == {"a": [(0, 4, [0, 3])], "cat": [(4, 8, [4, 7]), (0, 4, [1, 2])]}
    assert channel_index(10, got["cat"]).tolist() == [1, 2, 4, 7, 8, 9]


@pytest.mark.parametrize("name", ["mobilenet_v2", "yolo"])
def test_every_pruned_tensor_is_matched_on_exactly_its_kept_channels(name):
    a = analyze(zoo.MODELS[name](size=32, **ZOO[name][0]))
    groups = channel_groups(a.graph)
    keep = _choose(groups, 0.3, seed=1)
    student, _ = a.rewrite(lambda g, m, n: prune_channels(g, groups, keep, n))
    teacher, _ = a.rewrite(lambda g, m, n: _zero(g, groups, keep, n, "rows"), check=False)
    width = [
        SimpleNamespace(members=[[m.tensor, m.start, m.end] for m in g.members], kept=keep[g.id])
        for g in groups
        if g.id in keep
    ]
    from onnxmerge.finetune import TorchModule

    module = TorchModule(student)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32), np.float32))
    in_name = teacher.graph.input[0].name
    taps = distill_mod._find_taps(student, teacher, in_name, (3, 32, 32), module, x, width)
    names = candidates(student, teacher, {in_name: (1, 3, 32, 32)})
    assert [t.name for t in taps] == names  # every shared feature map is matched
    assert sum(t.index is not None for t in taps) >= len(keep)  # pruned ones on their channels
    n = len(teacher.graph.output)
    ref = distill_mod._Runner(distill_mod.with_outputs(teacher, names), in_name)(x)[n:]
    with torch.no_grad():
        got = module.run(x, tensors=names)[len(student.graph.output) :]
    for tap, t, s in zip(taps, teacher_part(ref, taps), got, strict=True):
        np.testing.assert_allclose(
            s.numpy(), t, rtol=1e-4, atol=1e-4 * np.abs(t).max(), err_msg=tap.name
        )


def test_a_tensor_of_another_width_without_a_plan_is_not_matched():
    a = analyze(zoo.MODELS["resnet18"](size=32, **ZOO["resnet18"][0]))
    groups = channel_groups(a.graph)
    keep = _choose(groups, 0.3, seed=2)
    student, _ = a.rewrite(lambda g, m, n: prune_channels(g, groups, keep, n))
    from onnxmerge.finetune import TorchModule

    x = torch.zeros((1, 3, 32, 32))
    in_name = a.model.graph.input[0].name
    taps = distill_mod._find_taps(
        student, a.model, in_name, (3, 32, 32), TorchModule(student), x, ()
    )
    names = candidates(student, a.model, {in_name: (1, 3, 32, 32)})
    assert len(taps) < len(names)  # resnet18: every feature map's group is pruned
    assert all(t.index is None for t in taps)
