"""On-disk cache of importance scores, so a second run on the same model and data is warm.

A score depends on the normalized model, the calibration feeds and the scoring options, so
entries are keyed by a digest of all three plus the candidate's key (kinds.Kind.key). Stored
in SQLite (WAL) next to the latency table: concurrent runs and interrupted runs stay readable.
Width pruning's channel orders (kinds/width/consumers.py) depend on the same three and are
kept beside the scores, as lists of channel indices by group key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from onnxmerge.cache import cache_folder, connect


def _digest(model_sha256: str, feeds: list[dict], options: dict) -> str:
    h = hashlib.sha256(model_sha256.encode())
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name]).tobytes())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


class ImportanceCache:
    """Mapping candidate key (kinds.Kind.key) -> importance for one (model, feeds, options)
    digest; `model_sha256` is the normalized model's (Analysis.reference_sha256, computed once
    per run: serializing a ResNet-50 to hash it costs 0.2 s)."""

    FILENAME = "importance.sqlite"
    VERSION = 6  # bump when the scoring itself changes: old scores must not be reused

    def __init__(
        self,
        cache_dir: str | Path | None,
        model_sha256: str,
        feeds: list[dict],
        calibrate: bool,
        fit_options: dict,
    ) -> None:
        folder = cache_folder(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        options = {"calibrate": calibrate, "version": self.VERSION, **fit_options}
        self.digest = _digest(model_sha256, feeds, options)
        self._conn = connect(folder / self.FILENAME)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS importance "
            "(digest TEXT, candidate TEXT, value REAL, PRIMARY KEY (digest, candidate))"
        )
        rows = self._conn.execute(
            "SELECT candidate, value FROM importance WHERE digest = ?", (self.digest,)
        )
        self._values = dict(rows.fetchall())
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS orders "
            "(digest TEXT, grp TEXT, channels TEXT, PRIMARY KEY (digest, grp))"
        )

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def update(self, scores: dict[str, float]) -> None:
        """Store scores by candidate key (committed at once)."""
        rows = [(self.digest, k, float(v)) for k, v in scores.items()]
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO importance VALUES (?, ?, ?)", rows)
        self._values.update({k: v for _, k, v in rows})

    def orders(self) -> dict[str, list[int]]:
        """Every channel order stored under this digest, by group key."""
        query = "SELECT grp, channels FROM orders WHERE digest = ?"
        rows = self._conn.execute(query, (self.digest,))
        return {k: json.loads(v) for k, v in rows.fetchall()}

    def put_orders(self, orders: dict[str, list[int]]) -> None:
        """Store channel orders by group key (committed at once)."""
        rows = [(self.digest, k, json.dumps([int(i) for i in v])) for k, v in orders.items()]
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?)", rows)
