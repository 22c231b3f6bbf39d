"""Loading a user's ONNX file: every way it can be bad becomes one OnnxMergeError line.

Checks, in order: the file exists and parses as a ModelProto; every external-data file stays
inside the model's folder (or `--external-data-dir`) and exists; the default-domain opset is
one we support; the checker passes; every graph input has a static shape (or `--input-shape`
gives one).
`check_convs` runs after shape inference (normalize calls it): every Conv's weight must agree
with its input tensor, attributes and bias, since neither the checker nor ONNX's shape
inference looks at channel counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper

from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph.conv import auto_pad_of

MIN_OPSET = 7


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse Polygraphy-style `NAME:1x3x224x224` (or `NAME:[1,3,224,224]`) specs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        dims = dims.strip().strip("[]")
        try:
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d)
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) <= 0:
            raise OnnxMergeError(f"bad --input-shape {spec!r}: expected NAME:1x3x224x224")
        shapes[name] = shape
    return shapes


def _parse(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise OnnxMergeError(f"{path}: a folder, not an ONNX file")
    if not path.is_file():
        raise OnnxMergeError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... on bad bytes
        raise OnnxMergeError(f"{path}: not a valid ONNX file ({type(exc).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxMergeError(f"{path}: not a valid ONNX file (no graph)")
    return model


def _load_external_data(
    model: onnx.ModelProto, path: Path, external_data_dir: str | os.PathLike | None = None
) -> None:
    """Inline the external data, read from `external_data_dir` (default: the model's folder)."""
    given = external_data_dir is not None
    folder = Path(external_data_dir if given else path.parent).resolve()
    where = f"the external data folder {folder}" if given else "the model's folder"
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = Path(info.location)
        target = (folder / location).resolve()
        if location.is_absolute() or not target.is_relative_to(folder):
            raise OnnxMergeError(
                f"{path}: external data path {info.location!r} of tensor {tensor.name!r} "
                f"leaves {where}; refusing to read it"
            )
        if not target.is_file():
            hint = "" if given else "; give --external-data-dir DIR if it lies elsewhere"
            raise OnnxMergeError(
                f"{path}: external data file {info.location!r} for tensor {tensor.name!r} "
                f"is missing from {folder}{hint}"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise OnnxMergeError(f"{path}: cannot read external data ({exc})") from None


def _check_opset(model: onnx.ModelProto, path: Path) -> int:
    opsets = {o.domain: o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if version is None or not MIN_OPSET <= version <= newest:
        raise OnnxMergeError(
            f"{path}: unsupported opset {version} (onnxmerge supports {MIN_OPSET}..{newest})"
        )
    return version


def _dynamic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A symbolic, unknown, 0 or -1 dimension (Paddle writes -1 for dynamic)."""
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def batch_of_one(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """{input: its shape at batch 1} for every input whose only dynamic dimension is the
    first (a dynamic batch, as torch exports write it); the others are left out."""
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        dims = list(value.type.tensor_type.shape.dim)
        if value.name in inits or not dims or not _dynamic(dims[0]):
            continue
        if not any(_dynamic(d) for d in dims[1:]):
            shapes[value.name] = (1, *(d.dim_value for d in dims[1:]))
    return shapes


def with_input_shapes(
    model: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]] | None,
    require_static: bool = False,
    path: Path | None = None,
) -> onnx.ModelProto:
    """`model` with `--input-shape` applied and checked (a copy, unless nothing changes).

    With `require_static`, an input left with a dynamic dimension is an error that names the
    flag to give. Raises OnnxMergeError for an unknown input name, a rank mismatch or a
    shape that conflicts with a fixed dimension.
    """
    shapes = shapes or {}
    if _has_shapes(model, shapes) and not (require_static and _any_dynamic(model, shapes)):
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    _fix_input_shapes(fixed, shapes, path or Path("the model"), require_static)
    return fixed


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _any_dynamic(model: onnx.ModelProto, shapes: dict) -> bool:
    return any(
        v.name not in shapes and any(_dynamic(d) for d in v.type.tensor_type.shape.dim)
        for v in _real_inputs(model)
    )


def _has_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Every input named in `shapes` already has exactly that static shape."""
    dims = {
        i.name: tuple(-1 if _dynamic(d) else d.dim_value for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
    }
    return all(dims.get(name) == tuple(shape) for name, shape in shapes.items())


def _fix_input_shapes(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], path: Path, require_static: bool
) -> None:
    inputs = _real_inputs(model)
    names = {i.name for i in inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise OnnxMergeError(
            f"input shapes (--input-shape) name {unknown}, not graph inputs (inputs: "
            f"{sorted(names)})"
        )
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if value.name in shapes:
            shape = shapes[value.name]
            if len(shape) != len(dims):
                raise OnnxMergeError(
                    f"--input-shape {value.name}: rank {len(shape)} but the input has rank "
                    f"{len(dims)}"
                )
            for dim, size in zip(dims, shape, strict=True):
                if not _dynamic(dim) and dim.dim_value != size:
                    raise OnnxMergeError(
                        f"--input-shape {value.name}: dimension {size} conflicts with the "
                        f"model's fixed {dim.dim_value}"
                    )
                dim.Clear()
                dim.dim_value = size
        elif require_static and any(_dynamic(d) for d in dims):
            shown = "x".join(
                str(d.dim_value) if not _dynamic(d) else d.dim_param or "?" for d in dims
            )
            example = [
                d.dim_value if not _dynamic(d) else (1 if i == 0 else 224)
                for i, d in enumerate(dims)
            ]
            flag = "x".join(map(str, example))
            raise OnnxMergeError(
                f"{path}: input {value.name!r} has a dynamic shape ({shown}); give the shape "
                f"to analyze and time with e.g. --input-shape {value.name}:{flag} (Python: "
                f"input_shapes={{{value.name!r}: {tuple(example)}}}; your sizes for the "
                "dynamic dims; the output keeps them dynamic)"
            )


def load_model(
    path: str | os.PathLike,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    external_data_dir: str | os.PathLike | None = None,
    check_shapes: bool = True,
) -> onnx.ModelProto:
    """Load and validate a model; return it with external data inlined.

    External data is read from `external_data_dir` when given (Polygraphy's
    `--external-data-dir`), else from the model's folder; it may not leave that folder.
    `input_shapes` are applied; with `check_shapes`, every input must then be static.
    Raises OnnxMergeError for every way the file can be bad (see the module docstring).
    """
    path = Path(path)
    model = _parse(path)
    _check_opset(model, path)
    _load_external_data(model, path, external_data_dir)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise OnnxMergeError(f"{path}: the ONNX checker rejects the model ({first})") from None
    except ValueError:
        pass  # models over 2 GB cannot be checked in memory; ORT will tell later
    if input_shapes or check_shapes:
        model = with_input_shapes(model, input_shapes, require_static=check_shapes, path=path)
    return model


def _ints(node: gs.Node, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in node.attrs.get(name, default)]


def _conv_problem(node: gs.Node) -> str | None:
    """What is inconsistent about one Conv (after shape inference), or None."""
    if len(node.inputs) < 2:
        return "has no weight input"
    x, w_t = node.inputs[0], node.inputs[1]
    w_shape = getattr(w_t, "shape", None)
    if isinstance(w_t, gs.Constant):
        w_shape = tuple(np.asarray(w_t.values).shape)
    if w_shape is None or any(not isinstance(d, int) for d in w_shape):
        return None  # a computed weight of unknown shape: nothing to compare
    rank = len(w_shape)
    if rank < 3:
        return f"has a weight of rank {rank} (expected (out, in/group, *kernel))"
    spatial = rank - 2
    group = int(node.attrs.get("group", 1))
    out_ch, in_per_group = w_shape[0], w_shape[1]
    if group < 1 or out_ch % group:
        return f"has group {group}, which does not divide its {out_ch} output channels"
    kernel = node.attrs.get("kernel_shape")
    if kernel is not None and [int(k) for k in kernel] != list(w_shape[2:]):
        return f"has kernel_shape {list(kernel)} but its weight is {list(w_shape)}"
    for name, size in (("strides", spatial), ("dilations", spatial), ("pads", 2 * spatial)):
        vals = _ints(node, name, [1 if name != "pads" else 0] * size)
        if len(vals) != size:
            return f"has {len(vals)} {name} for a {spatial}-D kernel"
        if min(vals) < (0 if name == "pads" else 1):
            return f"has invalid {name} {vals}"
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = node.inputs[2]
        b_shape = tuple(np.asarray(b.values).shape) if isinstance(b, gs.Constant) else b.shape
        if b_shape is not None and all(isinstance(d, int) for d in b_shape):
            if tuple(b_shape) != (out_ch,):
                return f"has a bias of shape {list(b_shape)} for {out_ch} output channels"
    x_shape = getattr(x, "shape", None)
    if x_shape is None:
        return None
    if len(x_shape) != rank:
        return f"reads '{x.name}' of rank {len(x_shape)} with a weight of rank {rank}"
    channels = x_shape[1]
    if isinstance(channels, int) and channels != in_per_group * group:
        return (
            f"has a weight {list(w_shape)} that reads {in_per_group * group} input channels"
            f"{f' ({in_per_group} x group {group})' if group > 1 else ''}, but its input "
            f"'{x.name}' has {channels}"
        )
    pads = _ints(node, "pads", [0] * 2 * spatial)
    dilations = _ints(node, "dilations", [1] * spatial)
    auto_pad = auto_pad_of(node.attrs)
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"has an unknown auto_pad {auto_pad!r}"
    if auto_pad != "NOTSET" and "pads" in node.attrs:
        return f"has both auto_pad {auto_pad} and explicit pads (runtimes refuse it)"
    if auto_pad == "NOTSET":
        for ax in range(spatial):
            size = x_shape[2 + ax]
            if not isinstance(size, int):
                continue
            extent = dilations[ax] * (w_shape[2 + ax] - 1) + 1
            if size + pads[ax] + pads[ax + spatial] < extent:
                return (
                    f"has a kernel of extent {extent} on an input of size {size} "
                    f"(pads {pads[ax]}+{pads[ax + spatial]}) along axis {2 + ax}"
                )
    return None


def check_convs(graph: gs.Graph) -> None:
    """Every Conv must be consistent with its input after shape inference (else one error)."""
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        problem = _conv_problem(node)
        if problem is not None:
            raise OnnxMergeError(f"Conv '{node.name}' {problem}; the model is inconsistent")
