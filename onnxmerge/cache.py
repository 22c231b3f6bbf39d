"""Where onnxmerge keeps what it measured: latency and importance tables, TensorRT caches."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def default_cache_dir() -> Path:
    """$ONNXMERGE_CACHE, else ~/.cache/onnxmerge."""
    env = os.environ.get("ONNXMERGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnxmerge"


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    """The folder of the latency, importance and split caches: `cache_dir`, its parent when
    it names a file (a latency-table .sqlite), else default_cache_dir()."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder.parent if folder.suffix else folder


def connect(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """An SQLite connection in WAL mode, safe when several runs open a new cache at once.

    WAL lets concurrent runs read while one writes, and a killed run never leaves half a row.
    Switching a new database to WAL takes an exclusive lock that SQLite's busy timeout does
    not wait for, so that one statement is retried until `timeout`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.05)
