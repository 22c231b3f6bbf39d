"""`onnxmerge fuse FT OUT --plan PLAN`: merge exactly a plan's groups of its fine-tune graph.

For random plans on small zoo models, the fine-tune graph fused with the plan must be the
plan's merged network: the same number of Conv nodes and the same outputs (ONNX Runtime, 1e-5
relative). Plain `fuse` merges every activation-free run, more than the plan on MobileNetV2
(a linear bottleneck's projection with the next expansion 1x1). Also: plans without conv names
(mapped by chain name), chains numbered differently in the fine-tune graph of a branching
network, the 1x1 doubling conv a fully pruned identity residual becomes, and plans that do not
fit (an error, never a partial merge).
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from partitions import build_segments, candidates_by_start, partition, segs

from onnxmerge import api, zoo
from onnxmerge.errors import OnnxMergeError
from onnxmerge.kinds.depth.kind import groups_from_segments
from onnxmerge.kinds.depth.segments import rewrites_nothing
from onnxmerge.plan import Plan
from onnxmerge.runtime import compare_outputs

ERROR_PREFIX = "onnxmerge: error:"


def n_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


def max_rel(a: onnx.ModelProto, b: onnx.ModelProto) -> float:
    return max(d.max_rel for d in compare_outputs(a, b).values())


def make_plan(model: onnx.ModelProto, choices, named: bool = True) -> Plan:
    """A plan whose groups are `choices` (segments, or {chain: [(s, e, kept)]}), round-tripped
    through its JSON."""
    m = api.analyze(model).match
    segments = segs(choices) if isinstance(choices, dict) else choices
    groups = groups_from_segments([mc.chain for mc in m.chains], segments)
    if not named:  # a plan written before groups carried their conv names
        groups = [replace(g, convs=[]) for g in groups]
    plan = Plan("layermerge", "ort-cpu", 1.5, 1.0, 1.0, 2.0, 1.0, groups)
    return Plan.from_json(plan.to_json())


def resnet_pruned_block(m) -> dict:
    """ResNet-18: block 1 of the main chain (convs 1-4) as one group keeping 3 and 4."""
    choices = singletons(m)
    choices[1][:4] = [(0, 4, (3, 4))]
    return choices


def singletons(m) -> dict:
    """Every mergeable chain as its unchanged convs."""
    return {
        ci: [(p - 1, p, (p,)) for p in range(1, mc.chain.length + 1)]
        for ci, mc in enumerate(m.chains)
        if mc.mergeable
    }


# ------------------------------------------------------------------ random plans


@functools.cache
def zoo_model(name: str) -> onnx.ModelProto:
    return zoo.MODELS[name](width=0.25, size=32)


@functools.cache
def zoo_candidates(name: str):
    """(match, {(chain, start): [candidates]}) of a zoo model."""
    m = api.analyze(zoo_model(name)).match
    return m, candidates_by_start(m)


def draw_choices(data, name: str) -> list:
    """A random partition of every mergeable chain into candidate segments (some pruned)."""
    m, by_start = zoo_candidates(name)
    return partition(m, by_start, lambda options: data.draw(st.sampled_from(options)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3", "yolo"])
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), named=st.booleans())
def test_fuse_with_plan_is_the_plans_merged_network(name, data, named):
    model = zoo_model(name)
    m, _ = zoo_candidates(name)
    choices = draw_choices(data, name)
    merged = build_segments(model, choices)
    ft = build_segments(model, choices, form="finetune")
    plan = make_plan(model, choices, named)

    fused, report = api.fuse(ft, plan=plan)
    assert n_convs(fused) == n_convs(merged)
    assert max_rel(merged, fused) <= 1e-5
    # A group of one kept conv (the rest pruned) is one conv of the fine-tune graph already.
    merges = sum(len(c.kept) > 1 for c in choices)
    assert (
        merges
        <= report.merged_groups
        <= sum(not rewrites_nothing(m.chains[c.chain], c) for c in choices)
    )
    # The report compares with the fine-tune graph, whose own float32 rounding can reach 1e-4
    # on random plans (long linear runs); every merge is exact by construction.
    assert set(report.outputs) == {o.name for o in ft.graph.output}
    assert all(g.border is None for g in report.groups)
    assert report.skipped_inexact == 0


@pytest.mark.slow
def test_mobilenet_v2_plain_fuse_merges_more_than_the_plan(tmp_path):
    """The linear bottleneck's projection and the next expansion 1x1 have no activation
    between them even in the original: plain fuse joins them, the plan does not."""
    model = zoo_model("mobilenet_v2")
    m = api.analyze(model).match
    choices = singletons(m)
    choices[0][1:3] = [(1, 3, (2, 3))]  # one merged group: depthwise 3x3 + projection 1x1
    merged = build_segments(model, choices)
    ft = build_segments(model, choices, form="finetune")

    make_plan(model, choices).save(tmp_path / "plan.json")
    planned, _ = api.fuse(ft, plan=tmp_path / "plan.json")
    plain, _ = api.fuse(ft)
    assert n_convs(planned) == n_convs(merged) == n_convs(model) - 1
    assert n_convs(plain) < n_convs(merged)
    assert max_rel(merged, planned) <= 1e-5


def test_groups_from_segments_names_the_kept_convs():
    model = zoo_model("resnet18")
    m = api.analyze(model).match
    chain = m.chains[1].chain
    g = groups_from_segments([mc.chain for mc in m.chains], segs(resnet_pruned_block(m)))[1]
    assert (g.chain, g.start, g.end, g.kept, g.pruned) == (chain.name, 0, 4, [3, 4], [1, 2])
    assert g.convs == [chain.conv(3).name, chain.conv(4).name]
    assert g.kernel == [5, 5] and g.activation_kept == chain.activations[4]


# ------------------------------------------------------------------ the doubling 1x1 conv


@pytest.mark.slow
def test_fully_pruned_identity_residual_is_one_more_position():
    """In ResNet-18's group (2, 8] keeping only conv 5, blocks 2 and 4 are Add(x, x): the
    fine-tune graph writes each as a 1x1 depthwise conv of weight 2, a chain position of its
    own that the plan's group takes along. Block 2's comes first, so it takes the group's
    padding: the merge stays exact with a trained (nonzero) bias. Renamed (not recognisable
    any more), a doubling conv makes the plan not fit."""
    model = zoo_model("resnet18")
    m = api.analyze(model).match
    choices = singletons(m)
    choices[1][2:8] = [(2, 8, (5,))]
    merged = build_segments(model, choices)
    ft = build_segments(model, choices, form="finetune")
    doubled = [n for n in ft.graph.node if "_doubled_" in n.name]
    name = m.chains[1].chain.name
    assert sorted(n.name for n in doubled) == [f"{name}_doubled_4", f"{name}_doubled_8"]

    for named in (True, False):
        fused, report = api.fuse(ft, plan=make_plan(model, choices, named))
        assert report.merged_groups == 1
        assert n_convs(fused) == n_convs(merged)
        assert max_rel(merged, fused) <= 1e-5

    inits = {t.name: t for t in ft.graph.initializer}
    rng = np.random.default_rng(0)
    for node in doubled:  # as if trained: the doubling convs get a bias
        bias = numpy_helper.to_array(inits[node.input[2]])
        inits[node.input[2]].CopyFrom(
            numpy_helper.from_array(
                rng.standard_normal(bias.shape).astype(bias.dtype), node.input[2]
            )
        )
    fused, report = api.fuse(ft, plan=make_plan(model, choices))
    assert report.max_rel <= 1e-5
    assert all(g.border is None for g in report.groups)  # exact by construction

    doubled[0].name = "renamed"
    with pytest.raises(OnnxMergeError, match="first difference: 'conv_.*' in the plan, 'renamed'"):
        api.fuse(ft, plan=make_plan(model, choices))
    with pytest.raises(OnnxMergeError, match=f"keeps 11 convs, the model's {name} has 12"):
        api.fuse(ft, plan=make_plan(model, choices, named=False))


# ------------------------------------------------------------------ chains renumbered


def branchy() -> onnx.ModelProto:
    """Two branches from the input, each conv chains -> MaxPool -> more convs, concatenated.

    Chains are numbered in node order, and the nodes are sorted by depth: pruning branch B's
    middle conv and removing its activations makes its post-pool chain shallower than branch
    A's, so the two post-pool chains swap numbers in the fine-tune graph.
    """
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(x: str, name: str) -> str:
        w = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [name], name=name, pads=[1] * 4))
        return name

    def op(kind: str, x: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, [x], [f"{x}_{kind}"], name=f"{x}_{kind}", **attrs))
        return f"{x}_{kind}"

    def pool(x: str) -> str:
        return op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])

    a = pool(op("Relu", conv(op("Relu", conv("x", "a1")), "a2")))
    a = conv(op("Relu", conv(a, "a3")), "a4")
    b = op("Relu", conv(op("Relu", conv(op("Relu", conv("x", "b1")), "b2")), "b3"))
    b = conv(pool(b), "b4")
    nodes.append(helper.make_node("Concat", [a, b], ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_chains_renumbered_in_the_finetune_graph_are_found_by_conv_names():
    model = branchy()
    m = api.analyze(model).match
    first = {mc.chain.conv(1).name: ci for ci, mc in enumerate(m.chains)}
    choices = singletons(m)
    choices[first["b1"]] = [(0, 3, (1, 3))]  # prune b2: branch B gets shallower
    choices[first["a3"]] = [(0, 2, (1, 2))]  # merge a3 and a4
    merged = build_segments(model, choices)
    ft = build_segments(model, choices, form="finetune")
    fm = api.analyze(ft).match
    renamed = {mc.chain.conv(1).name: mc.chain.name for mc in fm.chains}
    assert renamed["a3"] != m.chains[first["a3"]].chain.name  # the numbers did change

    fused, report = api.fuse(ft, plan=make_plan(model, choices))
    assert report.merged_groups == 2
    assert n_convs(fused) == n_convs(merged) == n_convs(model) - 3  # b2 pruned, 2 merges
    assert max_rel(merged, fused) <= 1e-5
    # Without conv names the plan's chain names point at the wrong chains: refused.
    with pytest.raises(OnnxMergeError, match="does not fit"):
        api.fuse(ft, plan=make_plan(model, choices, named=False))


# ------------------------------------------------------------------ plans that do not fit


def test_plan_that_does_not_fit_is_refused():
    model = zoo_model("resnet18")
    m = api.analyze(model).match
    choices = resnet_pruned_block(m)
    ft = build_segments(model, choices, form="finetune")
    plan = make_plan(model, choices)
    fuse = functools.partial(api.fuse, ft)
    g0, rest = plan.groups[1], plan.groups[2:]

    with pytest.raises(OnnxMergeError, match="malformed"):  # a gap in the tiling
        fuse(plan=replace(plan, groups=[plan.groups[0], *rest]))
    nine = [replace(g, chain="chain9", convs=[]) if g.chain == "chain1" else g for g in plan.groups]
    with pytest.raises(OnnxMergeError, match="no chain chain9"):
        fuse(plan=replace(plan, groups=nine))
    fewer = replace(g0, kept=[4], convs=g0.convs[1:])
    with pytest.raises(OnnxMergeError, match="does not fit"):
        fuse(plan=replace(plan, groups=[plan.groups[0], fewer, *rest]))
    with pytest.raises(OnnxMergeError, match="does not fit"):  # the model, not its ft graph
        api.fuse(model, plan=make_plan(model, choices, named=False))
    kernel = replace(g0, kernel=[3, 3])
    with pytest.raises(OnnxMergeError, match="kernel"):
        fuse(plan=replace(plan, groups=[plan.groups[0], kernel, *rest]))


def test_direct_merges_a_group_that_pads_later():
    """Two padded 3x3 convs with no activation between them, as written (not a fine-tune
    graph): merging them is exact in the interior only, so only --direct does it."""
    rng = np.random.default_rng(0)
    w = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), n)
        for n in "ab"
    ]
    nodes = [
        helper.make_node("Conv", ["x", "a"], ["h"], name="c1", pads=[1] * 4),
        helper.make_node("Conv", ["h", "b"], ["y"], name="c2", pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        w,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    plan = make_plan(model, {0: [(0, 2, (1, 2))]})
    with pytest.raises(OnnxMergeError, match="a later conv pads"):
        api.fuse(model, plan=plan)
    fused, report = api.fuse(model, plan=plan, direct=True)
    assert n_convs(fused) == 1
    (group,) = report.groups
    assert group.border is not None and group.interior.max_rel <= 1e-5


@pytest.mark.slow
def test_cli_fuse_plan(tmp_path, run_cli, snapshot):
    """`fuse --plan`: the plan's merged network; a plan that does not fit (or no plan file) is
    one error line, exit 2, and nothing written."""
    model = zoo_model("resnet18")
    m = api.analyze(model).match
    choices = resnet_pruned_block(m)
    onnx.save(build_segments(model, choices, form="finetune"), tmp_path / "ft.onnx")
    plan = make_plan(model, choices)
    plan.save(tmp_path / "plan.json")
    g0 = plan.groups[1]
    fewer = replace(g0, kept=[4], convs=g0.convs[1:])  # one kept conv less than the graph has
    vgg = zoo_model("vgg")
    bad = {  # plan file -> what the error says
        "chain.json": (
            [
                replace(g, chain="chain7", convs=[]) if g.chain == "chain1" else g
                for g in plan.groups
            ],
            "no chain chain7 in the model",
        ),
        "counts.json": ([plan.groups[0], fewer, *plan.groups[2:]], "does not fit"),
        "vgg.json": (make_plan(vgg, singletons(api.analyze(vgg).match)).groups, "does not fit"),
        "junk.json": (None, "not an onnxmerge plan"),
        "missing.json": (None, "cannot read the plan"),
    }
    for file, (groups, _) in bad.items():
        if groups is not None:
            replace(plan, groups=groups).save(tmp_path / file)
    (tmp_path / "junk.json").write_text("{not json")
    before = snapshot(tmp_path)
    results = run_cli.many(
        [["fuse", "ft.onnx", f"{c}.onnx", "--plan", c] for c in bad]
        + [["fuse", "ft.onnx", "out.onnx", "--plan", "plan.json"]]
    )
    for (case, (_, says)), r in zip(bad.items(), results, strict=False):
        assert r.rc == 2, (case, r.stdout, r.stderr)
        assert len(r.stderr_lines) == 1, (case, r.stderr)
        assert r.stderr_lines[0].startswith(ERROR_PREFIX) and says in r.stderr, (case, r.stderr)
    ok = results[-1]
    assert ok.rc == 0, ok.stderr
    assert "merged 1 groups of plan.json" in ok.stdout
    assert n_convs(onnx.load(tmp_path / "out.onnx")) == n_convs(build_segments(model, choices))
    assert set(snapshot(tmp_path)) - set(before) == {"out.onnx"}  # the failures wrote nothing
