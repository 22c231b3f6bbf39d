"""What an earlier run of the same request settled on, remembered in the cache folder.

A warm run of a request (the same model bytes, target and options) need not search again
what a cold run already measured: `both` remembers the width share it kept (both.py), the
budget search the budget and plan it settled on (compress.py, search.remembered_start).
Each is a small JSON value in `requests.sqlite` of the cache folder, under a sha256 of the
model's digest, what is remembered, and every option but `progress` and `cache_dir`
(callables and paths by their repr, so a user's scorer is never remembered across processes).
A remembered value only says where to start: what it builds is measured again, and a miss
searches as a cold run does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Any

FILENAME = "requests.sqlite"
# The model counts by its digest; what the summary scores on changes no choice.
_IGNORED = ("model", "progress", "cache_dir", "eval_data", "eval_count", "evaluation")


class RequestMemory:
    """One remembered value: `what` ("split", "budget") for the request `settings`
    (compress's arguments) on the model whose sha256 is `digest`, in the cache folder of
    `cache_dir` (cache.cache_folder)."""

    def __init__(
        self, cache_dir: str | os.PathLike | None, digest: str, settings: dict, what: str
    ) -> None:
        from onnxmerge.cache import cache_folder, connect

        rest = {k: repr(v) for k, v in sorted(settings.items()) if k not in _IGNORED}
        self.key = hashlib.sha256(json.dumps([what, digest, rest]).encode()).hexdigest()
        self._conn = connect(cache_folder(cache_dir) / FILENAME)
        self._conn.execute("CREATE TABLE IF NOT EXISTS memory (key TEXT PRIMARY KEY, value TEXT)")

    def get(self) -> Any | None:
        """The value remembered for this request, or None."""
        query = "SELECT value FROM memory WHERE key = ?"
        row = self._conn.execute(query, (self.key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, value: Any) -> None:
        """Remember `value` (JSON-serializable) for this request; best effort: a locked
        cache loses the memory, never the result."""
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO memory (key, value) VALUES (?, ?)",
                    (self.key, json.dumps(value)),
                )
        except sqlite3.Error:
            pass
