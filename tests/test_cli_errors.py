"""Bad input to `onnxmerge inspect` / `onnxmerge fuse`: one error line, exit 2, nothing touched.

Every case runs the CLI in a subprocess inside a scratch folder and checks that stderr is one
line starting "onnxmerge: error:", the exit code is 2, no traceback is printed, no file under
the scratch folder changed (the input model and its data are byte-identical) and no file was
added (no output, no temporary file).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmerge.runtime import run

ERROR_PREFIX = "onnxmerge: error:"


def tiny_model(
    opset: int = 17, batch: int | str = 1, in_channels_of_weight: int = 3, hw: int | str = 8
):
    """x (N, 3, 8, 8) -> Conv 3x3 -> Relu -> Conv 3x3 -> y (N, 4, 8, 8); `hw`: H and W."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, in_channels_of_weight, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, hw, hw])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b1, "b1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save_external(model: onnx.ModelProto, path: Path, location: str = "model.data") -> None:
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        size_threshold=0,
        all_tensors_to_one_file=True,
        location=location,
    )


def set_location(path: Path, location: str) -> None:
    """Point every external-data tensor of the saved model at `location`."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


# ------------------------------------------------------------------ bad input models
# Each maker writes into `d` and returns the input model path plus extra CLI arguments.

Maker = Callable[[Path], tuple[Path, list[str]]]


def _text(d: Path):
    p = d / "model.onnx"
    p.write_text("this is plain text, not a protobuf\n" * 20)
    return p, []


def _empty(d: Path):
    p = d / "model.onnx"
    p.write_bytes(b"")
    return p, []


def _truncated(d: Path):
    p = d / "model.onnx"
    data = tiny_model().SerializeToString()
    p.write_bytes(data[: len(data) // 2])
    return p, []


def _missing(d: Path):
    return d / "no_such_model.onnx", []


def _folder_as_model(d: Path):
    p = d / "a_folder.onnx"
    p.mkdir()
    return p, []


def _external_data_missing(d: Path):
    p = d / "model.onnx"
    save_external(tiny_model(), p)
    (d / "model.data").unlink()
    return p, []


def _external_data_short(d: Path):
    p = d / "model.onnx"
    save_external(tiny_model(), p)
    data = (d / "model.data").read_bytes()
    (d / "model.data").write_bytes(data[:100])
    return p, []


def _external_data_parent(d: Path):
    sub = d / "models"
    sub.mkdir()
    p = sub / "model.onnx"
    save_external(tiny_model(), p)
    (sub / "model.data").rename(d / "secret.bin")  # the bytes exist, but outside the folder
    set_location(p, "../secret.bin")
    return p, []


def _external_data_absolute(d: Path):
    sub = d / "models"
    sub.mkdir()
    p = sub / "model.onnx"
    save_external(tiny_model(), p)
    (sub / "model.data").rename(d / "secret.bin")
    set_location(p, str((d / "secret.bin").resolve()))
    return p, []


def _external_data_absolute_inside(d: Path):
    # An absolute path is refused even when it names a file beside the model.
    p = d / "model.onnx"
    save_external(tiny_model(), p)
    set_location(p, str((d / "model.data").resolve()))
    return p, []


def _external_data_symlink_out(d: Path):
    sub = d / "models"
    sub.mkdir()
    p = sub / "model.onnx"
    save_external(tiny_model(), p)
    (sub / "model.data").rename(d / "secret.bin")
    (sub / "model.data").symlink_to(d / "secret.bin")
    return p, []


def _opset(version: int) -> Maker:
    def make(d: Path):
        p = d / "model.onnx"
        onnx.save_model(tiny_model(opset=version), str(p))
        return p, []

    make.__name__ = f"_opset{version}"
    return make


def _dynamic_no_shape(d: Path):  # a dynamic batch alone is taken as 1: H and W too
    p = d / "model.onnx"
    onnx.save_model(tiny_model(batch="N", hw="H"), str(p))
    return p, []


def _bad_shape(spec: str, batch: int | str = "N") -> Maker:
    def make(d: Path):
        p = d / "model.onnx"
        onnx.save_model(tiny_model(batch=batch), str(p))
        return p, ["--input-shape", spec]

    make.__name__ = f"_bad_shape[{spec}]"
    return make


BAD_INPUTS: dict[str, Maker] = {
    "text": _text,
    "empty": _empty,
    "truncated": _truncated,
    "missing": _missing,
    "folder": _folder_as_model,
    "external-missing": _external_data_missing,
    "external-short": _external_data_short,
    "external-parent": _external_data_parent,
    "external-absolute": _external_data_absolute,
    "external-absolute-inside": _external_data_absolute_inside,
    "external-symlink-out": _external_data_symlink_out,
    "opset3": _opset(3),
    "opset6": _opset(6),
    "opset99": _opset(99),
    "dynamic": _dynamic_no_shape,
    "shape-no-colon": _bad_shape("1x3x8x8"),
    "shape-no-name": _bad_shape(":1x3x8x8"),
    "shape-no-dims": _bad_shape("x:"),
    "shape-letters": _bad_shape("x:1xax8x8"),
    "shape-zero": _bad_shape("x:0x3x8x8"),
    "shape-negative": _bad_shape("x:-1x3x8x8"),
    "shape-rank": _bad_shape("x:1x3x8"),
    "shape-unknown-name": _bad_shape("y:1x3x8x8"),
    "shape-conflicts-fixed": _bad_shape("x:1x3x9x8", batch=1),
}


def assert_one_error_line(r) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.rc == 2, (r.rc, r.stdout, r.stderr)
    assert len(r.stderr_lines) == 1, r.stderr
    assert r.stderr_lines[0].startswith(ERROR_PREFIX), r.stderr
    assert r.stdout == "", r.stdout


@pytest.fixture
def work(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, work, run_cli, snapshot):
    """`inspect` and `fuse` on the same bad input (run side by side)."""
    model, extra = BAD_INPUTS[case](work)
    out = work / "out"
    out.mkdir()
    before = snapshot(work)
    results = run_cli.many(
        [["inspect", model, *extra], ["fuse", model, out / "fused.onnx", *extra]]
    )
    for r in results:
        assert_one_error_line(r)
    assert results[0].stderr == results[1].stderr  # the same one line from both commands
    assert snapshot(work) == before  # input bytes unchanged, no output and no temp file
    assert not any(out.iterdir())


@pytest.mark.parametrize("case", ["truncated", "external-parent", "dynamic"])
def test_bad_input_other_flags(case, work, run_cli, snapshot):
    """`inspect --json` and `fuse --direct` take the same error path."""
    model, extra = BAD_INPUTS[case](work)
    out = work / "out"
    out.mkdir()
    before = snapshot(work)
    results = run_cli.many(
        [["inspect", model, "--json", *extra], ["fuse", model, out / "f.onnx", "--direct", *extra]]
    )
    for r in results:
        assert_one_error_line(r)
    assert snapshot(work) == before
    assert not any(out.iterdir())


def test_error_names_the_problem(work, run_cli):
    """The one line says what is wrong (spot checks of the message text)."""
    p, _ = _external_data_parent(work)
    assert "leaves the model's folder" in run_cli("inspect", p).stderr
    p, _ = _dynamic_no_shape(work / "models")  # overwrite the model there with a dynamic one
    assert "--input-shape" in run_cli("inspect", p).stderr
    p, _ = _opset(99)(work)
    assert "opset 99" in run_cli("inspect", p).stderr


USAGE_ERRORS = {
    ("inspect",): "required: model",
    ("inspect", "model.onnx", "--bogus"): "unrecognized arguments: --bogus",
    ("fuse", "model.onnx"): "required: output",
    ("model.onnx", "out.onnx"): "--speedup is required",
    ("model.onnx", "out.onnx", "--speedup", "fast"): "expected a number or 'max', got 'fast'",
    ("model.onnx", "out.onnx", "--speedup", "1.5", "--method", "x"): "invalid choice: 'x'",
    ("profile",): "required: model",
    ("demo", "--bogus"): "unrecognized arguments: --bogus",
    ("model.onnx", "out.onnx", "--speedup", "1.5", "--min-width", "2"): "argument --min-width:",
    ("model.onnx", "out.onnx", "--speedup", "1.5", "--min-width", "x"): "fraction in (0, 1]",
}


def test_usage_errors_are_one_line(work, run_cli, snapshot):
    """argparse's errors too: one line naming the problem and `-h`, exit 2, nothing written."""
    _valid(work)
    before = snapshot(work)
    results = run_cli.many(list(USAGE_ERRORS), cwd=work)
    for (argv, expected), r in zip(USAGE_ERRORS.items(), results, strict=True):
        assert_one_error_line(r)
        assert expected in r.stderr, (argv, r.stderr)
        assert "-h`)" in r.stderr and "usage:" not in r.stderr, r.stderr
    assert snapshot(work) == before


# ------------------------------------------------------------------ output path checks


def _valid(work: Path, external: bool = False) -> Path:
    p = work / "model.onnx"
    if external:
        save_external(tiny_model(), p)
    else:
        onnx.save_model(tiny_model(), str(p))
    return p


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "dot-dot", "absolute", "symlink"])
def test_fuse_output_is_input(spelling, work, run_cli, snapshot):
    model = _valid(work)
    out = {
        "same": "model.onnx",
        "dot-slash": "./model.onnx",
        "dot-dot": "../work/model.onnx",
        "absolute": str(model.resolve()),
        "symlink": "link.onnx",
    }[spelling]
    if spelling == "symlink":
        (work / "link.onnx").symlink_to(model)
    before = snapshot(work)
    r = run_cli("fuse", "model.onnx", out, cwd=work)
    assert_one_error_line(r)
    assert "input path" in r.stderr
    assert snapshot(work) == before


def test_fuse_output_is_existing_folder(work, run_cli, snapshot):
    model = _valid(work)
    out = work / "out"
    out.mkdir()
    before = snapshot(work)
    for target in (out, f"{out}/", work):
        r = run_cli("fuse", model, target)
        assert_one_error_line(r)
        assert "folder" in r.stderr
        assert snapshot(work) == before
    assert not any(out.iterdir())


def test_fuse_output_folder_missing(work, run_cli, snapshot):
    model = _valid(work)
    before = snapshot(work)
    r = run_cli("fuse", model, work / "nowhere" / "fused.onnx")
    assert_one_error_line(r)
    assert "does not exist" in r.stderr
    assert snapshot(work) == before
    assert not (work / "nowhere").exists()


def test_fuse_output_is_input_external_data(work, run_cli, snapshot):
    model = _valid(work, external=True)
    before = snapshot(work)
    r = run_cli("fuse", model, work / "model.data")
    assert snapshot(work) == before
    assert_one_error_line(r)


@pytest.mark.parametrize("command", ["inspect", "fuse"])
def test_inconsistent_conv_weight_is_a_user_error(command, work, run_cli, snapshot):
    p = work / "model.onnx"
    onnx.save_model(tiny_model(in_channels_of_weight=5), str(p))
    (work / "out").mkdir()
    before = snapshot(work)
    args = [p] if command == "inspect" else [p, work / "out" / "fused.onnx"]
    r = run_cli(command, *args)
    assert snapshot(work) == before
    assert_one_error_line(r)


# ------------------------------------------------------------------ the same inputs, fixed


@pytest.mark.parametrize("spec", ["x:1x3x8x8", "x:2x3x8x8", "x:[1,3,8,8]"])
def test_input_shape_makes_dynamic_model_work(spec, work, run_cli, snapshot):
    model, _ = _dynamic_no_shape(work)
    before = snapshot(work)
    r = run_cli("inspect", model, "--input-shape", spec)
    assert r.rc == 0, r.stderr
    assert "total: 1 chains, 2 convs" in r.stdout
    out = work / "fused.onnx"
    r = run_cli("fuse", model, out, "--all", "--input-shape", spec)
    assert r.rc == 0, r.stderr
    assert "Traceback" not in r.stderr
    after = snapshot(work)
    assert after.pop("fused.onnx")
    assert after == before  # input untouched, no temp file left
    onnx.checker.check_model(onnx.load(str(out)))


def test_a_dynamic_batch_alone_is_analyzed_at_1(work, run_cli):
    """A torch export's dynamic batch (N x 3 x 8 x 8) needs no --input-shape: analyzed and
    timed at batch 1, as Polygraphy feeds dynamic dims; the output keeps N dynamic."""
    model = work / "model.onnx"
    onnx.save_model(tiny_model(batch="N"), str(model))
    r = run_cli("inspect", model)
    assert r.rc == 0 and "total: 1 chains, 2 convs" in r.stdout, r.stderr
    out = work / "fused.onnx"
    r = run_cli("fuse", model, out, "--all")
    assert r.rc == 0, r.stderr
    fused = onnx.load(str(out))
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert run(fused, {"x": x})["y"].shape == (3, 4, 8, 8)


def test_external_data_model_inside_folder_works(work, run_cli, snapshot):
    model = _valid(work, external=True)
    (work / "sub").mkdir()
    before = snapshot(work)
    r = run_cli("inspect", model)
    assert r.rc == 0, r.stderr
    r = run_cli("fuse", model, work / "sub" / "fused.onnx")
    assert r.rc == 0, r.stderr
    after = snapshot(work)
    assert after.pop("sub/fused.onnx")
    assert after == before


def test_fuse_writes_only_the_output(work, run_cli, snapshot):
    model = _valid(work)
    before = snapshot(work)
    r = run_cli("fuse", model, "fused.onnx", cwd=work)
    assert r.rc == 0, r.stderr
    assert r.stderr == ""
    assert "wrote fused.onnx" in r.stdout
    after = snapshot(work)
    assert set(after) - set(before) == {"fused.onnx"}
    assert {k: v for k, v in after.items() if k != "fused.onnx"} == before


def test_fuse_overwrites_an_existing_output_file(work, run_cli):
    model = _valid(work)
    out = work / "fused.onnx"
    out.write_text("old")
    r = run_cli("fuse", model, out, "--all")
    assert r.rc == 0, r.stderr
    onnx.checker.check_model(onnx.load(str(out)))
    assert sorted(p.name for p in work.iterdir()) == ["fused.onnx", "model.onnx"]


def test_fuse_output_mode_follows_umask(work, run_cli):
    model = _valid(work)
    out = work / "fused.onnx"
    old = os.umask(0o022)
    try:
        r = run_cli("fuse", model, out, "--all")
    finally:
        os.umask(old)
    assert r.rc == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize("which", ["plan-is-input", "finetune-is-data", "plan-is-finetune"])
def test_compress_side_outputs_never_replace_inputs(which, work, run_cli, snapshot):
    """--plan and --finetune-graph are outputs too: checked before any work is done."""
    model = _valid(work, external=True)
    flags = {
        "plan-is-input": ["--plan", str(model)],
        "finetune-is-data": ["--finetune-graph", str(work / "model.data")],
        "plan-is-finetune": [
            "--plan",
            str(work / "x.json"),
            "--finetune-graph",
            str(work / "x.json"),
        ],
    }[which]
    before = snapshot(work)
    r = run_cli(model, work / "out.onnx", "--speedup", "1.5", *flags)
    assert_one_error_line(r)
    assert snapshot(work) == before


@pytest.mark.parametrize("command", ["fuse", "compress"])
def test_output_is_the_plan_read(command, work, run_cli, snapshot):
    """A plan read with fuse --plan / --from-plan is an input: no output may replace it."""
    model = _valid(work)
    plan = work / "p.json"
    plan.write_text("{}")
    before = snapshot(work)
    if command == "fuse":
        r = run_cli("fuse", model, plan, "--plan", plan)
    else:
        r = run_cli(model, work / "out.onnx", "--from-plan", plan, "--plan", plan)
    assert_one_error_line(r)
    assert "input file" in r.stderr
    assert snapshot(work) == before


def test_a_cause_every_split_shares_is_said_once(run_cli, tmp_path) -> None:
    """`--fp16` on ort-cpu fails every split of `both` the same way: one line, the cause once
    (a review read it four times in a row)."""
    from onnxmerge import zoo

    src = tmp_path / "m.onnx"
    onnx.save(zoo.mobilenet_v2(width=0.25, size=32), src)
    r = run_cli(src, tmp_path / "o.onnx", "--speedup", "1.3", "--fp16", "--cache", tmp_path / "c")
    assert r.rc == 2 and len(r.stderr_lines) == 1, r.stderr
    assert r.stderr.count("fp16") == 1 and "every split" in r.stderr


@pytest.mark.parametrize("prune", ["depth", "both"])
def test_bad_eval_data_fails_before_any_work(prune, work, run_cli, snapshot):
    """--eval data is read before the search: a bad path or count is one line naming --eval,
    exit 2, no cache made (nothing timed), nothing written."""
    model = _valid(work)
    before = snapshot(work)
    cache = work.parent / f"cache-{prune}"
    args = [model, work / "o.onnx", "--speedup", "1.2", "--prune", prune, "--cache", cache]
    results = run_cli.many(
        [[*args, "--eval", work / "nowhere"], [*args, "--eval", work, "--eval-count", "0"]]
    )
    for r, words in zip(results, ("--eval ", "--eval-count 0"), strict=True):
        assert_one_error_line(r)
        assert words in r.stderr, r.stderr
    assert snapshot(work) == before and not cache.exists()
