"""Output paths: checked before any work, written all or nothing.

A run writes up to three files (the model, its plan, the fine-tune graph). Every path is
checked before the input is even analyzed: its folder exists, it is not a folder, it does not
replace the input, the input's external data, a file the run reads (a plan) or another output.
Then `write_all` writes every file to a temporary name beside its target first and renames
them only once all are written, so a failure leaves none of them behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from onnxmerge.errors import OnnxMergeError

PathLike = str | os.PathLike


def _external_files(src: PathLike, external_data_dir: PathLike | None = None) -> set[Path]:
    """The external-data files a model reads (resolved), so an output never replaces one."""
    from onnx import external_data_helper as edh

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception:
        return set()  # loading reports the bad file itself
    folder = (
        Path(external_data_dir).resolve()
        if external_data_dir is not None
        else Path(src).resolve().parent
    )
    return {
        (folder / edh.ExternalDataInfo(t).location).resolve()
        for t in edh._get_all_tensors(model)
        if edh.uses_external_data(t)
    }


def check_outputs(
    src: PathLike | onnx.ModelProto,
    outputs: Sequence[PathLike],
    external_data_dir: PathLike | None = None,
    inputs: Sequence[PathLike] = (),
) -> None:
    """Raise OnnxMergeError unless every output path can be written (see module docstring)."""
    is_path = not isinstance(src, onnx.ModelProto)
    data = _external_files(src, external_data_dir) if is_path else set()
    source = Path(src).resolve() if is_path else None
    others = {Path(i).resolve() for i in inputs}
    for dst in outputs:
        target = Path(dst).resolve()
        if target == source:
            raise OnnxMergeError(f"output path {dst} is the input path; refusing to overwrite it")
        if target in data:
            raise OnnxMergeError(
                f"output path {dst} is the input's external-data file; refusing to overwrite it"
            )
        if Path(dst).is_dir():
            raise OnnxMergeError(f"output path {dst} is a folder; give a file name")
        if target in others:
            raise OnnxMergeError(f"output path {dst} is an input file; refusing to replace it")
        folder = Path(dst).parent if str(Path(dst).parent) else Path(".")
        if not folder.is_dir():
            raise OnnxMergeError(f"{dst}: output folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise OnnxMergeError(f"{dst}: output folder {folder} is not writable")
    if len({Path(o).resolve() for o in outputs}) < len(outputs):
        raise OnnxMergeError(f"output paths must differ: {', '.join(map(str, outputs))}")


def write_all(writers: Sequence[tuple[PathLike, Callable[[Path], None]]]) -> None:
    """Write every (path, write(tmp_path)) to a temporary file, then rename them all.

    A failure in any writer removes every temporary file and leaves the targets untouched.
    """
    from onnxmerge.graph.save import temporary_beside

    done: list[tuple[Path, Path]] = []
    try:
        for path, write in writers:
            tmp = temporary_beside(Path(path))
            done.append((tmp, Path(path)))
            write(tmp)
        for tmp, path in done:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.data").unlink(missing_ok=True)
        raise
