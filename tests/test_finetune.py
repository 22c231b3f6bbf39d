"""onnxmerge.finetune: an ONNX model as a trainable torch module, and the weights written back."""

from __future__ import annotations

import functools
import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from partitions import build_segments, candidates_by_start, partition

from onnxmerge import api, zoo
from onnxmerge.errors import OnnxMergeError
from onnxmerge.runtime import session

torch = pytest.importorskip("torch")
finetune = pytest.importorskip("onnxmerge.finetune")


@functools.cache
def base_model() -> onnx.ModelProto:
    # BatchNormalization unfolded, Clip, residual Add, GlobalAveragePool, Flatten, Gemm.
    return zoo.mobilenet_v2(width=0.25, size=32, seed=3)


@functools.cache
def finetune_graph() -> onnx.ModelProto:
    """onnxmerge's fine-tune form of base_model() for a fixed random partition of its chains
    into short segments (long ones remove so many activations that the random-weight network's
    last Clip saturates, and no gradient flows)."""
    model = base_model()
    m = api.analyze(model).match
    rng = random.Random(0)
    by_start = candidates_by_start(m, max_kernel=7, longest=2)

    def pick(options):
        short = [c for c in options if c.end == c.start + 1 and c.all_kept]
        return rng.choice(short if short and rng.random() < 0.5 else options)

    choices = partition(m, by_start, pick)
    return build_segments(model, choices, form="finetune")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def ort_logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def rel(ref, out) -> float:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(np.abs(ref - out).max() / np.abs(ref).max())


def module_logits(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def conv_weights(model: onnx.ModelProto) -> list[str]:
    return [n.input[1] for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("which", ["model", "finetune_graph"])
def test_forward_matches_onnxruntime(which):
    model = base_model() if which == "model" else finetune_graph()
    module = finetune.TorchModule(model)
    x = images(3)
    ref, out = ort_logits(model, x), module_logits(module, x)
    if which == "model":
        assert rel(ref, out) <= 1e-5
        return
    # The fine-tune graph runs long activation-free conv runs (random weights, no ReLU6 to
    # bound them): float32 rounding alone moves ORT ~1.4e-5 away from a float64 evaluation.
    # Torch stays within 1e-5 of float64, and within 3e-5 of ORT.
    with torch.no_grad():
        exact = module.double()(torch.from_numpy(x).double()).numpy()
    assert rel(exact, out) <= 1e-5
    assert rel(ref, out) <= 3e-5


def test_parameters_are_the_weights():
    model = base_model()
    module = finetune.TorchModule(model)
    expected = set()
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            expected.update(n.input[1:])
        if n.op_type == "BatchNormalization":
            expected.update(n.input[1:3])
    assert set(module.names.values()) == expected
    keys = [k for k, _ in module.named_parameters()]
    assert all(k.startswith("params.") and "." not in k[7:] for k in keys)
    assert len(list(module.parameters())) == len(expected)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in expected:
        np.testing.assert_array_equal(module.parameter(name).detach().numpy(), inits[name])
    # Running statistics stay fixed: buffers, not parameters, and not in the state_dict.
    stats = {n.input[3] for n in model.graph.node if n.op_type == "BatchNormalization"}
    assert stats and not stats & set(module.names.values())
    assert set(module.state_dict()) == {f"params.{k}" for k in module.names}


def small_model() -> onnx.ModelProto:
    """Conv -> PRelu -> GlobalAveragePool -> Reshape -> MatMul, with dotted names."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "c.w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "c_w"),
        numpy_helper.from_array(np.full((4, 1, 1), 0.2, np.float32), "p.slope"),
        numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c_w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["y", "p.slope"], ["z"]),
        helper.make_node("GlobalAveragePool", ["z"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_dotted_names_prelu_and_matmul():
    model = small_model()
    rng = np.random.default_rng(1)
    module = finetune.TorchModule(model)
    assert sorted(module.names.values()) == ["c.w", "c_w", "fc.w", "p.slope"]
    assert len(set(module.names)) == 4  # "c.w" and "c_w" do not collide
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert rel(ort_logits(model, x), module_logits(module, x)) <= 1e-5
    module(torch.from_numpy(x)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("which", ["model", "finetune_graph"])
def test_gradients_reach_every_conv(which):
    model = base_model() if which == "model" else finetune_graph()
    module = finetune.TorchModule(model)
    out = module(torch.from_numpy(images(2)))
    assert out.requires_grad
    torch.nn.functional.log_softmax(out, 1)[:, :10].sum().neg().backward()
    names = conv_weights(model)
    assert names
    for name in names:
        grad = module.parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_sgd_steps_and_write_back():
    model = base_model()
    before = model.SerializeToString()
    module = finetune.TorchModule(model)
    start = {k: v.detach().clone() for k, v in module.initializers().items()}
    opt = torch.optim.SGD(module.parameters(), lr=1e-2)
    x = torch.from_numpy(images(4, seed=1))
    target = torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for name in conv_weights(model):
        assert not torch.equal(module.parameter(name), start[name]), name

    trained = finetune.to_onnx(module, model)
    assert model.SerializeToString() == before  # the input model is left as it was
    onnx.checker.check_model(trained)
    old = {t.name: t for t in model.graph.initializer}
    trainable = set(module.names.values())
    for t in trained.graph.initializer:
        assert t.data_type == old[t.name].data_type
        if t.name not in trainable:
            assert t.SerializeToString() == old[t.name].SerializeToString()
    assert [t.name for t in trained.graph.initializer] == list(old)
    x2 = images(3, seed=2)
    assert rel(ort_logits(trained, x2), module_logits(module, x2)) <= 1e-5
    assert rel(ort_logits(model, x2), module_logits(module, x2)) > 1e-4
    # Without `model`, the model the module was built from is used.
    assert finetune.to_onnx(module).SerializeToString() == trained.SerializeToString()


def test_trained_finetune_graph_fuses_exactly():
    ft = finetune_graph()
    module = finetune.TorchModule(ft)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    x = torch.from_numpy(images(4, seed=3))
    with torch.no_grad():
        target = torch.softmax(finetune.TorchModule(base_model())(x), 1)
    for _ in range(3):
        opt.zero_grad()
        loss = -(target * torch.log_softmax(module(x), 1)).sum(1).mean()
        loss.backward()
        opt.step()
    trained = finetune.to_onnx(module, ft)
    fused, report = api.fuse(trained)
    assert report.convs_after < report.convs_before
    assert report.max_rel <= 1e-5
    x2 = images(3, seed=4)
    assert rel(ort_logits(trained, x2), ort_logits(fused, x2)) <= 1e-5
    # torch on the fine-tune graph vs ORT on the fused one: two runtimes, two roundings.
    assert rel(module_logits(module, x2), ort_logits(fused, x2)) <= 3e-5


def test_module_to_float64():
    model = small_model()
    module = finetune.TorchModule(model).to(torch.float64)
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = module(torch.from_numpy(x).double())
    assert out.dtype == torch.float64
    assert rel(ort_logits(model, x), out.detach().numpy()) <= 1e-5
    trained = finetune.to_onnx(module)  # values cast back to each initializer's own dtype
    dtypes = [t.data_type for t in trained.graph.initializer]
    assert dtypes == [t.data_type for t in model.graph.initializer]
    assert dtypes.count(TensorProto.FLOAT) == 4


def test_errors():
    model = base_model()
    with pytest.raises(OnnxMergeError, match="not an initializer"):
        finetune.TorchModule(model, trainable=["nope"])
    module = finetune.TorchModule(model)
    with pytest.raises(OnnxMergeError, match="not the model"):
        finetune.to_onnx(module, finetune_graph())
    with pytest.raises(KeyError):
        module.parameter("nope")
    with pytest.raises(OnnxMergeError, match="no such file"):
        finetune.TorchModule("/nonexistent/model.onnx")
    only = finetune.TorchModule(model, trainable=conv_weights(model)[:1])
    assert len(list(only.parameters())) == 1
