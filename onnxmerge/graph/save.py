"""Atomic saves: a failed or interrupted run never leaves a partial output behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from onnxmerge.errors import OnnxMergeError

_TWO_GB = 2**31 - 2**24  # protobuf's limit, with headroom


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` to `path` via a temporary file in the same folder and a rename.

    Models too large for one protobuf get their weights in `<name>.data` beside them.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxMergeError(f"{path}: output folder {folder} does not exist")
    external = model.ByteSize() > _TWO_GB
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual new-file mode
    data_name = f"{path.name}.data"
    try:
        if external:
            onnx.save_model(
                model,
                tmp,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
            )
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if external:
            (folder / data_name).unlink(missing_ok=True)
        raise
