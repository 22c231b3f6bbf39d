"""onnxmerge.distill and onnxmerge.augment: distillation from the original on unlabeled data."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxmerge import api, zoo
from onnxmerge.errors import OnnxMergeError
from onnxmerge.runtime import session

torch = pytest.importorskip("torch")
distill_mod = pytest.importorskip("onnxmerge.distill")
augment = pytest.importorskip("onnxmerge.augment")
distill_loss = pytest.importorskip("onnxmerge.distill_loss")
distill = distill_mod.distill


@functools.cache
def teacher() -> onnx.ModelProto:
    return zoo.resnet(18, width=0.25, size=32, seed=1)


@functools.cache
def compressed():
    """(merged model, fine-tune graph, plan) of teacher() at its fastest depth plan."""
    import tempfile

    res = api.compress(
        teacher(), "max", kind="depth", calib_count=8, progress=False, cache_dir=tempfile.mkdtemp()
    )
    return res.model, res.finetune_graph(), res.plan


def ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = session(model)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def structure(model: onnx.ModelProto) -> tuple:
    """Everything but initializer values: nodes, interface, initializer names/shapes/types."""
    g = model.graph
    inits = sorted((t.name, tuple(t.dims), t.data_type) for t in g.initializer)
    return (
        [n.SerializeToString() for n in g.node],
        [i.SerializeToString() for i in g.input],
        [o.SerializeToString() for o in g.output],
        inits,
    )


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


# -- the trained network ---------------------------------------------------------------------


def test_short_run_keeps_the_structure_lowers_held_out_distortion_and_writes_back_exactly():
    student, _, _ = compressed()
    res = distill(student, teacher(), steps=12, batch=8, lr=1e-3, progress=False, seed=0)
    assert structure(res.model) == structure(student)  # node for node, dims as declared
    changed = [
        k for k, v in weights(res.model).items() if not np.array_equal(v, weights(student)[k])
    ]
    assert changed, "no weight was trained"
    assert res.steps == 12 and res.history[0]["step"] == 0
    assert res.after.distortion < 0.8 * res.before.distortion
    # the history's step-0 score (torch) is the before score (ONNX Runtime)
    assert res.history[0]["distortion"] == pytest.approx(res.before.distortion, rel=1e-3)
    # write-back: ONNX Runtime on the written model = the torch module of it
    from onnxmerge.finetune import TorchModule

    x = np.concatenate([f[next(iter(f))] for f in res.held_out[:8]])
    with torch.no_grad():
        mod = TorchModule(res.model)(torch.from_numpy(x)).numpy()
    ref = ort(res.model, x)
    assert np.abs(ref - mod).max() <= 1e-5 * np.abs(ref).max()


def test_the_best_step_is_written_never_a_worse_one():
    """A learning rate that wrecks the network: the held-out score picks step 0, and the
    written weights are the student's own."""
    student, _, _ = compressed()
    res = distill(student, teacher(), steps=4, batch=4, lr=10.0, progress=False, eval_every=1)
    assert res.best_step == 0 and res.history[-1]["distortion"] > res.history[0]["distortion"]
    assert all(np.array_equal(v, weights(student)[k]) for k, v in weights(res.model).items())
    assert res.after.distortion == pytest.approx(res.before.distortion, rel=1e-6)
    # nothing held out: no selection, the last step is written
    res = distill(student, teacher(), steps=2, batch=4, lr=10.0, progress=False, holdout=0)
    assert res.best_step == 2 and res.before is None and "nothing held out" in res.log[-1]
    assert any(not np.array_equal(v, weights(student)[k]) for k, v in weights(res.model).items())


def test_local_distillation_adds_the_shared_tensors_to_the_loss():
    """Same seed, same first batch: the local term adds to the outputs' loss; the merged
    network's feature maps (named as in the teacher) are the ones matched."""
    student, _, _ = compressed()
    losses: dict[float, list] = {}
    for local in (0.0, 1.0):
        got = losses[local] = []
        opts = {"steps": 12, "batch": 8, "lr": 1e-3, "seed": 0, "progress": False}
        res = distill(
            student, teacher(), local=local, on_step=lambda _, x, g=got: g.append(x), **opts
        )
        assert res.after.distortion < res.before.distortion
    matched = int(res.log[0].split()[2])
    merged = {o for n in student.graph.node if n.op_type == "Conv" for o in n.output}
    assert matched >= len(merged - {o.name for o in student.graph.output}) > 0
    assert losses[1.0][0] > losses[0.0][0]


def test_finetune_graph_with_plan_is_fused_to_the_merged_geometry():
    merged, ft, plan = compressed()
    res = distill(ft, teacher(), steps=4, batch=4, plan=plan, progress=False)
    convs = lambda m: sum(n.op_type == "Conv" for n in m.graph.node)  # noqa: E731
    assert convs(res.model) == convs(merged) < convs(res.trained)
    assert structure(res.trained) == structure(ft)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a, b = ort(res.trained, x), ort(res.model, x)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert any("fused with the plan" in line for line in res.log)


def test_a_dynamic_input_fuses_with_the_given_shape_and_stays_dynamic():
    """A fine-tune graph and teacher with an open N x 3 x H x W input, --input-shape given:
    the plan is checked and fused at that shape, and the output keeps the open dims."""
    _, ft, plan = compressed()
    opened = []
    for m in (ft, teacher()):
        o = onnx.ModelProto()
        o.CopyFrom(m)
        dims = o.graph.input[0].type.tensor_type.shape.dim
        for d, p in zip(dims, ("n", None, "h", "w"), strict=True):
            if p:
                d.dim_param = p
        o.graph.ClearField("value_info")
        opened.append(o)
    res = distill(*opened, steps=2, batch=4, plan=plan, progress=False, input_shape=(3, 32, 32))
    dims = res.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["n", 3, "h", "w"]
    assert any("fused with the plan" in line for line in res.log)


def test_ctrl_c_keeps_the_best_so_far_and_resume_continues(tmp_path):
    student, _, _ = compressed()
    ckpt = tmp_path / "run.ckpt.pt"

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    opts = {"batch": 4, "lr": 1e-3, "progress": False, "eval_every": 1, "checkpoint": ckpt}
    first = distill(student, teacher(), steps=6, on_step=interrupt, **opts)
    assert first.steps == 3 and any("interrupted at step 3" in x for x in first.log)
    assert ckpt.exists() and first.after is not None
    again = distill(student, teacher(), steps=6, resume=True, **opts)
    assert again.steps == 6 and any("resumed" in x for x in again.log)
    assert [h["step"] for h in again.history] == list(range(7))
    # a checkpoint of another student is refused
    other = onnx.ModelProto()
    other.CopyFrom(student)
    other.doc_string = "another"
    with pytest.raises(OnnxMergeError, match="another student"):
        distill(other, teacher(), steps=6, resume=True, **opts)


def test_bad_arguments_fail_in_one_line_before_training():
    student, _, plan = compressed()
    # a plan of chains the student does not have (whatever the measured plan merged)
    groups = [dataclasses.replace(g, chain=f"no_such_{g.chain}", convs=[]) for g in plan.groups]
    alien = dataclasses.replace(plan, groups=groups)
    trained = []
    on_step = lambda *a: trained.append(a)  # noqa: E731
    for kwargs, match in (
        ({}, "one budget"),
        ({"steps": 2, "minutes": 1}, "one budget"),
        ({"steps": 0}, "positive"),
        ({"steps": 2, "lr": 0}, "positive"),
        ({"steps": 2, "local": -1}, "local .* must be >= 0"),
        ({"steps": 2, "local": float("nan")}, "local .* must be >= 0"),
        ({"steps": 2, "lr": float("nan")}, "lr must be positive"),
        ({"steps": 2, "augment": "wild"}, "augment must be one of mild, strong"),
        ({"steps": 2, "holdout": 1.0}, "holdout"),
        ({"steps": 2, "input_shape": (3, 16, 16)}, "teacher's input 'input' is N x"),
        ({"steps": 2, "device": "abacus"}, "unknown device"),
        ({"steps": 2, "plan": alien}, "does not fit"),
    ):
        with pytest.raises(OnnxMergeError, match=match):
            distill(student, teacher(), progress=False, on_step=on_step, **kwargs)
    other = onnx.ModelProto()  # the student cut before its classifier: other outputs
    other.CopyFrom(student)
    gemm = next(n for n in other.graph.node if n.op_type == "Gemm")
    other.graph.output[0].name = gemm.input[0]
    other.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(OnnxMergeError, match="not shaped as the teacher's"):
        distill(other, teacher(), steps=2, progress=False, on_step=on_step)
    assert not trained


def test_teacher_and_student_may_name_their_input_differently():
    student, _, _ = compressed()
    renamed = onnx.ModelProto()
    renamed.CopyFrom(teacher())
    old = renamed.graph.input[0].name
    renamed.graph.input[0].name = "image"
    for node in renamed.graph.node:
        node.input[:] = ["image" if x == old else x for x in node.input]
    res = distill(student, renamed, steps=1, batch=2, progress=False)
    assert res.steps == 1 and res.after is not None


def _static_batch_net(seed: int) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Reshape to [1, 8] -> Gemm, batch fixed at 1 (as the
    dynamo exporter writes a Flatten by default)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 8], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "static", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_static_batch_export_trains_at_any_batch():
    """A batch fixed at 1 is spelled in the Reshape's shape: the torch graph runs it at batch 4
    as ONNX Runtime runs each input alone, and distill trains it (it crashed: '[1, 8]' is
    invalid for an input of size 32)."""
    from onnxmerge.torch_graph import TorchGraph

    teacher_net, student = _static_batch_net(0), _static_batch_net(1)
    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    (got,) = TorchGraph(teacher_net)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), ort(teacher_net, x), rtol=1e-5, atol=1e-5)
    res = distill(student, teacher_net, steps=2, batch=4, progress=False)
    assert res.steps == 2 and structure(res.model) == structure(student)
    with pytest.raises(OnnxMergeError, match="conflicts with the model's fixed 1"):
        api.distill(student, teacher_net, input_shapes={"x": (2, 3, 16, 16)}, steps=1)


# -- losses, split, views --------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    k=st.integers(2, 9),
    t=st.sampled_from([1.0, 2.0, 4.0]),
    seed=st.integers(0, 10_000),
)
def test_classifier_loss_is_the_tempered_kl(n, k, t, seed):
    rng = np.random.default_rng(seed)
    s, r = rng.standard_normal((2, n, k)) * 3
    if seed % 2:  # teacher outputs that happen to lie in [0, 1] (float64: the dtype check)
        r = np.abs(r) / (1 + np.abs(r))
    got = float(distill_loss.distill_loss(torch.tensor(s), torch.tensor(r), None, t))

    def logp(z):
        z = z / t - (z / t).max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    want = t**2 * np.mean(np.sum(np.exp(logp(r)) * (logp(r) - logp(s)), 1))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(2, 3, 4, 4), (1, 5, 7), (3, 2)]), seed=st.integers(0, 10_000))
def test_dense_loss_is_the_per_channel_normalized_error(shape, seed):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(shape) * rng.uniform(0.01, 100, (1, shape[1]) + (1,) * (len(shape) - 2))
    s = r + rng.standard_normal(shape)
    if len(shape) == 2 and shape[1] >= 2:
        return  # that is a classifier
    (scale,) = distill_loss.channel_energy([r])
    got = float(distill_loss.distill_loss(torch.tensor(s), torch.tensor(r), scale, 1.0))
    d = (s - r).reshape(shape[0], shape[1], -1)
    e = (r**2).reshape(shape[0], shape[1], -1).mean((0, 2))
    assert got == pytest.approx(np.mean((d**2).mean((0, 2)) / e), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(groups=st.lists(st.integers(0, 12), min_size=1, max_size=40), holdout=st.floats(0, 0.9))
def test_split_keeps_groups_whole_and_holds_out_some(groups, holdout):
    train, held = augment.split_sources(groups, holdout)
    assert sorted(train + held) == list(range(len(groups)))
    assert not {groups[i] for i in train} & {groups[i] for i in held}
    distinct = len(set(groups))
    if holdout > 0 and distinct >= 2:
        assert held and train or round(holdout * distinct) >= distinct
    if holdout == 0 or distinct < 2:
        assert not held


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    sizes=st.lists(st.tuples(st.integers(9, 60), st.integers(9, 60)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_views_have_the_model_shape_and_are_seeded(h, w, sizes, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (3, a, b), dtype=np.uint8) for a, b in sizes]
    src = augment.Sources(arrays, list(range(len(arrays))), [""] * len(arrays), True)
    idx = list(range(len(arrays))) * 2
    a = augment.Views(src, (h, w), seed).batch(idx)
    b = augment.Views(src, (h, w), seed).batch(idx)
    assert tuple(a.shape) == (len(idx), 3, h, w) and torch.equal(a, b)
    assert torch.isfinite(a).all()
    # normalized [0, 1] RGB: within the ImageNet-normalized range
    assert float(a.min()) >= -2.2 and float(a.max()) <= 2.7
    centre = augment.Views(src, (h, w), seed).batch(idx, augment=False)
    assert torch.equal(centre[: len(arrays)], centre[len(arrays) :])  # no randomness


@settings(max_examples=30, deadline=None)
@given(
    preset=st.sampled_from(sorted(augment.AUGMENT)),
    sh=st.integers(20, 300),
    sw=st.integers(20, 300),
    seed=st.integers(0, 1000),
)
def test_views_crop_the_area_of_their_setting(preset, sh, sw, seed):
    """A view's crop covers the setting's range of the source's area (up to rounding), or is
    the centre square when no such box fits; only "strong" mixes views."""
    area, mixup = augment.AUGMENT[preset]
    src = augment.Sources([np.zeros((3, sh, sw), np.uint8)], [0], [""], True)
    views = augment.Views(src, (16, 16), seed, *augment.AUGMENT[preset])
    for _ in range(20):
        top, left, ch, cw = views._box(sh, sw)
        assert 0 <= top <= sh - ch and 0 <= left <= sw - cw
        got = ch * cw / (sh * sw)
        slack = (ch + cw + 1) / (sh * sw)  # each side rounded by up to half a pixel
        square = (ch, cw) == (min(sh, sw),) * 2
        assert square or area[0] - slack <= got <= area[1] + slack
    assert (mixup > 0) == (preset == "strong")


def test_sources_from_folders_npz_and_builtin(tmp_path):
    from PIL import Image

    for d, n in (("a", 2), ("b", 3)):
        (tmp_path / d).mkdir()
        for i in range(n):
            Image.new("RGB", (40 + i, 30), (10 * i, 50, 90)).save(tmp_path / d / f"{i}.png")
    src = augment.load_sources([tmp_path / "a", tmp_path / "b"], (3, 16, 16))
    assert len(src.arrays) == 5 and sorted(src.groups) == list(range(5)) and src.normalize
    assert all(a.dtype == np.uint8 and min(a.shape[1:]) == 24 for a in src.arrays)
    x = np.zeros((4, 3, 16, 16), np.float32)
    np.savez(tmp_path / "g.npz", x=x, groups=np.array([0, 0, 1, 1]))
    np.savez(tmp_path / "n.npz", x=x[:2])
    np.savez(tmp_path / "nan.npz", x=np.stack([np.zeros((3, 8, 8)), np.full((3, 8, 8), np.inf)]))
    src = augment.load_sources([tmp_path / "g.npz", tmp_path / "n.npz"], (3, 16, 16))
    assert src.groups == [0, 0, 1, 1, 2, 3] and not src.normalize
    builtin = augment.load_sources(None, (3, 16, 16))
    from onnxmerge import photos

    pool = photos.available()
    assert builtin.names == [p.name for p in pool] and builtin.groups == photos.scene_groups(pool)
    for data, match in (
        ([tmp_path / "a", tmp_path / "n.npz"], "not both"),
        ([tmp_path / "missing"], "missing: not found"),
        ([tmp_path / "n.npz"], "the model takes"),
        ([tmp_path / "nan.npz"], "1 of 2 arrays hold NaN or inf"),
        (None, "not an image"),
    ):
        with pytest.raises(OnnxMergeError, match=match):
            shape = (5, 16, 16) if match == "not an image" else (3, 8, 8)
            augment.load_sources(data, shape if "not found" not in match else (3, 16, 16))


def test_builtin_photos_without_scikit_image_fail_before_any_work(monkeypatch, tmp_path):
    """No data (the built-in photos) and no scikit-image: check_data says so, naming the
    caller's flag, before compressing (found by a review through the Polygraphy loader, where
    it came after compression); a folder needs no scikit-image."""
    import sys

    from onnxmerge import photos

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setattr(photos, "available", lambda colour_only=False: [])  # nor any other
    with pytest.raises(OnnxMergeError, match=r"given \(--distill\).* scikit-image"):
        augment.check_data([], "--distill")
    augment.check_data([tmp_path])


# -- the command line ------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_finetune_and_compress_distill(run_cli, tmp_path):
    student, ft, plan = compressed()
    onnx.save(teacher(), tmp_path / "t.onnx")
    onnx.save(student, tmp_path / "s.onnx")
    onnx.save(ft, tmp_path / "ft.onnx")
    plan.save(tmp_path / "p.plan.json")
    before = (tmp_path / "s.onnx").read_bytes()
    evals = np.random.default_rng(5).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "evals.npz", a=evals)
    r, fused, bad, bad2, bad3 = run_cli.many(
        [
            (
                "finetune",
                "s.onnx",
                "o.onnx",
                "--teacher",
                "t.onnx",
                "--steps",
                "3",
                "--batch",
                "4",
                "--local",
                "1",
                "--eval",
                "evals.npz",
                "--json",
            ),
            (
                "finetune",
                "ft.onnx",
                "f.onnx",
                "--teacher",
                "t.onnx",
                "--steps",
                "2",
                "--batch",
                "4",
                "--plan",
                "p.plan.json",
                "--no-timing",
                "-q",
                "--eval",
                "evals.npz",
            ),
            ("finetune", "s.onnx", "x.onnx", "--teacher", "missing.onnx", "--steps", "2"),
            (
                "finetune",
                "s.onnx",
                "y.onnx",
                "--teacher",
                "t.onnx",
                "--steps",
                "2",
                "--data",
                "nowhere",
            ),
            ("finetune", "s.onnx", "z.onnx", "--teacher", "t.onnx", "--eval", "nowhere"),
        ],  # fmt: skip
        timeout=300,
    )
    assert r.rc == 0, r.stderr
    report = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert report["steps"] == 3 and set(report["latency_ms"]) == {"teacher", "student", "output"}
    assert report["log"][0].split()[:2] == ["local", "distillation:"], report["log"]
    assert int(report["log"][0].split()[2]) > 0
    assert structure(onnx.load(tmp_path / "o.onnx")) == structure(student)
    assert (tmp_path / "s.onnx").read_bytes() == before
    assert not (tmp_path / "o.onnx.ckpt.pt").exists()
    # --eval: the student and the written network scored against the teacher on that data
    (out,) = report["eval"]["after"]
    assert report["eval"]["inputs"] == 6
    for key, name in (("before", "s.onnx"), ("after", "o.onnx")):
        top = [ort(onnx.load(tmp_path / m), evals).argmax(1) for m in ("t.onnx", name)]
        assert report["eval"][key][out]["top1"] == pytest.approx(np.mean(top[0] == top[1]))
    assert fused.rc == 0, fused.stderr
    assert "on 6 --eval inputs vs the teacher, output" in fused.stdout, fused.stdout
    assert "R²" in fused.stdout  # as the compress summary says it
    assert sum(n.op_type == "Conv" for n in onnx.load(tmp_path / "f.onnx").graph.node) == sum(
        n.op_type == "Conv" for n in student.graph.node
    )
    for b in (bad, bad2, bad3):
        assert b.rc == 2 and len(b.stderr_lines) == 1
    assert "--eval" in bad3.stderr and not (tmp_path / "z.onnx").exists()
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
    r = run_cli("t.onnx", "c.onnx", "--speedup", "max", "--calib-count", "8", "--distill",
                "--distill-steps", "2", "--distill-batch", "4", "--distill-local", "1",
                "--json", timeout=300)  # fmt: skip
    assert r.rc == 0, r.stderr
    report = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert report["fidelity_on"] == "held-out views, after distillation"
    assert report["distillation"]["steps"] == 2 and (tmp_path / "c.onnx").exists()
    assert report["distillation"]["log"][0].startswith("local distillation:")
    # distillation's inputs are checked before compressing
    lone, typo, negative = run_cli.many(
        [
            ("t.onnx", "d.onnx", "--speedup", "max", "--distill-steps", "2"),
            ("t.onnx", "e.onnx", "--speedup", "max", "--distill", "nowhere"),
            ("t.onnx", "g.onnx", "--speedup", "max", "--distill", "--distill-local", "-1"),
        ]
    )
    assert lone.rc == 2 and "needs --distill" in lone.stderr
    assert typo.rc == 2 and "--distill nowhere: not found" in typo.stderr
    assert negative.rc == 2 and "must be >= 0" in negative.stderr
    for r in (typo, negative):  # one line: nothing was compressed (no progress output)
        assert len(r.stderr_lines) == 1, r.stderr
    assert not list(tmp_path.glob("[deg].*"))
