"""Shared fixtures: an isolated HOME for subprocesses and a helper that runs the CLI; a hook
that skips `gpu`-marked tests where no GPU is present (so a GPU check is `pytest -m gpu`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu() -> str:
    """'' where PyTorch sees a CUDA device, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return "" if torch.cuda.is_available() else "no CUDA device for PyTorch"


@pytest.fixture
def macs_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """Registers tests/backends.py's MacsBackend (times nothing, exact) as backend "macs" for
    one test; returns that name."""
    from onnxmerge.latency import backend

    monkeypatch.setitem(backend._REGISTRY, "macs", ("backends", "MacsBackend"))
    return "macs"


def pytest_collection_modifyitems(config, items) -> None:
    """Skip every `gpu`-marked test where there is no GPU (checked once, only if needed)."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    why = _gpu() if marked else ""
    for item in marked if why else []:
        item.add_marker(pytest.mark.skip(reason=why))


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def cli_home(tmp_path_factory) -> Path:
    """A throwaway HOME: ONNX Runtime and friends may write under ~/.cache; keep it out of ~."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def cli_env(cli_home) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(cli_home)
    env["XDG_CACHE_HOME"] = str(cli_home / ".cache")
    env.pop("ONNXMERGE_DEBUG", None)  # the one-line error path is what the tests check
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def run_cli(cli_env, tmp_path):
    """run_cli("inspect", path, ...) -> CliResult: `python -m onnxmerge.cli ...` in tmp_path.

    run_cli.many([argv, argv, ...]) runs several at once and returns their results in order.
    """

    def run(*args, cwd: Path | None = None, timeout: float = 120) -> CliResult:
        return run_many([args], cwd=cwd, timeout=timeout)[0]

    def run_many(argvs, cwd: Path | None = None, timeout: float = 120) -> list[CliResult]:
        """Run several command lines at once (they must not write the same files)."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "onnxmerge.cli", *map(str, argv)],
                cwd=cwd or tmp_path,
                env=cli_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for argv in argvs
        ]
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            results.append(CliResult(proc.returncode, out, err))
        return results

    run.many = run_many
    return run


@pytest.fixture
def snapshot():
    """snapshot(folder) -> {relative path: sha256} of every file under it (hidden included)."""
    return folder_state


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_state(folder: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`, hidden ones included."""
    root = Path(folder)
    return {
        str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*")) if p.is_file()
    }
