"""Atomic saves: a failed or interrupted run never leaves a partial output behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from onnxmerge.errors import OnnxMergeError

_TWO_GB = 2**31 - 2**24  # protobuf's limit, with headroom


def temporary_beside(path: Path) -> Path:
    """An empty temporary file in `path`'s folder, with the usual new-file mode (umask)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxMergeError(f"{path}: output folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual new-file mode
    return Path(tmp)


def write_model(model: onnx.ModelProto, tmp: Path, final: Path) -> None:
    """Serialize `model` to `tmp`; one too large for a protobuf keeps its weights in
    `<final name>.data` beside it (written in place: only the model file is renamed)."""
    if model.ByteSize() > _TWO_GB:
        onnx.save_model(
            model,
            str(tmp),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{final.name}.data",
        )
    else:
        onnx.save_model(model, str(tmp))


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        write_model(model, tmp, path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
