"""LatencyTable: measured latencies of candidate convs, cached on disk across models and runs.

SQLite in WAL mode gives what a cache shared by concurrent runs needs: one row per key,
atomic commits (a killed run never leaves half a row), readers that never block the writer.
Every measurement is committed at once, so an interrupted table build resumes where it stopped.

Load. A latency is only as good as the machine's state when it was taken: other jobs on a
small CPU can slow every conv by 2x for minutes. So each row also stores the time of a fixed
reference conv (REFERENCE) measured in the same run, and every run re-times the reference
first. A cached row whose reference differs from today's by more than LOAD_SHIFT is rescaled
by the ratio (today's reference / the row's), so all rows speak for the machine as it is now;
rows from before references were stored (NULL) are measured again. `refresh=True` re-measures
everything (`onnxmerge profile --refresh`).

In a network. A conv timed alone pays what a conv between convs does not: the runtime's fixed
per-call cost (the OVERHEAD model's time) and the conversions of its input and output between
the graph's layout and the runtime's (Backend.boundary_ms, stored per row). They weigh most on
the cheapest convs (depthwise), whose removal then looks worth more than it is:
`measure_all(in_network=True)`, what the search uses, subtracts both.

Whole networks. A network's end-to-end time (network_ms) and a plan's interleaved pair
(compare) are cached too, keyed by the input's digest: a warm run repeats the measurements
its cold run decided on; another cache folder (`--cache DIR`) measures everything again.
An input network's own time (and the fraction of it outside convs) is the median of its
last POOLED runs' measurements (a run's latest replaces its earlier ones), so one run timed
under load does not mislead the first budget of every later run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
from tqdm import tqdm

from onnxmerge.cache import connect, default_cache_dir
from onnxmerge.latency.backend import Backend, Timing, compare_models, time_model
from onnxmerge.latency.models import conv_model, random_feed
from onnxmerge.signature import ConvSignature

SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (hash TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latency (
    signature TEXT NOT NULL,
    batch INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    fingerprint TEXT NOT NULL REFERENCES fingerprints(hash),
    median_ms REAL NOT NULL,
    p10_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    repeats INTEGER NOT NULL,
    measured_at REAL NOT NULL,
    ref_ms REAL,
    boundary_ms REAL,
    PRIMARY KEY (signature, batch, dtype, fingerprint)
);
CREATE TABLE IF NOT EXISTS networks (
    key TEXT NOT NULL,
    batch INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    fingerprint TEXT NOT NULL REFERENCES fingerprints(hash),
    ratio REAL NOT NULL,
    measured_at REAL NOT NULL,
    ref_ms REAL,
    PRIMARY KEY (key, batch, dtype, fingerprint)
);
CREATE TABLE IF NOT EXISTS network_runs (
    key TEXT NOT NULL, batch INTEGER NOT NULL, dtype TEXT NOT NULL, fingerprint TEXT NOT NULL,
    run TEXT NOT NULL, ratio REAL NOT NULL, measured_at REAL NOT NULL
);
"""
POOLED = 5  # an input network's cached time: the median over its last POOLED runs
RUN = f"{os.getpid()}-{time.time_ns()}"  # this process: one pooled measurement per run
_DB_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_WHERE_KEY = "WHERE key=? AND batch=? AND dtype=? AND fingerprint=?"  # networks, network_runs
_COLUMNS = "median_ms, p10_ms, p90_ms, repeats, ref_ms, boundary_ms"  # what _row reads
_WHERE_SIGNATURE = "signature=? AND batch=? AND dtype=? AND fingerprint=?"
# Columns added since the first schema (table, column): older caches get them as NULL.
_ADDED = (("latency", "ref_ms"), ("networks", "ref_ms"), ("latency", "boundary_ms"))


@dataclass
class TableStats:
    """How many latencies came from the cache and how many were measured (cumulative)."""

    hits: int = 0
    new: int = 0
    rescaled: int = 0  # hits taken under another load, rescaled to today's (subset of hits)


# The fixed per-call cost of a runtime: a 1x1 conv on a single pixel and channel.
OVERHEAD = ConvSignature(1, 1, (1, 1), (1, 1), (0, 0, 0, 0), 1, (1, 1))
# The load probe: a mid-sized conv, timed at the start of every run.
REFERENCE = ConvSignature(32, 32, (3, 3), (1, 1), (1, 1, 1, 1), 1, (28, 28), activation="relu")
# Cached rows whose reference differs from today's by more than this are rescaled.
LOAD_SHIFT = 0.15
# A reference below the timer's resolution (a stand-in backend that runs nothing) says nothing.
MIN_REFERENCE_MS = 1e-3


class LatencyTable:
    """Latency per ConvSignature on one backend; ``path_or_dir`` is a .sqlite file or a folder.

    Rows are keyed by the signature, the backend's batch and dtype, and the hash of the
    backend's fingerprint (stored too, as JSON), so a change of runtime, device, threads or
    precision never reuses an old number.
    """

    FILENAME = "latency.sqlite"

    def __init__(self, path_or_dir: str | Path | None, backend: Backend) -> None:
        path = Path(path_or_dir) if path_or_dir is not None else default_cache_dir()
        self.path = path if path.suffix in _DB_SUFFIXES else path / self.FILENAME
        self.backend = backend
        self.fingerprint = backend.fingerprint()
        self.fingerprint_hash = backend.fingerprint_hash()
        self.stats = TableStats()
        self._conn: sqlite3.Connection | None = None
        self._ref_ms: float | None = None
        self.run = RUN  # which run a pooled measurement belongs to (put_network)

    # -- storage --------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and the schema created) on first use or after close()."""
        if self._conn is None:
            conn = connect(self.path)
            try:
                conn.execute("PRAGMA synchronous=NORMAL")  # durable across crashes in WAL mode
                conn.executescript(_SCHEMA)  # idempotent; executescript commits itself
                for name, column in _ADDED:  # older caches: such rows are re-measured
                    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
                    if column not in columns:
                        conn.execute(f"ALTER TABLE {name} ADD COLUMN {column} REAL")
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                with conn:
                    conn.execute(
                        "INSERT OR IGNORE INTO fingerprints VALUES (?, ?)",
                        (self.fingerprint_hash, json.dumps(self.fingerprint, sort_keys=True)),
                    )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the database connection (reopened on next use)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, sig: ConvSignature) -> tuple[str, int, str, str]:
        return (sig.key(), self.backend.batch, self.backend.dtype, self.fingerprint_hash)

    def _row(self, sig: ConvSignature) -> tuple | None:
        query = f"SELECT {_COLUMNS} FROM latency WHERE {_WHERE_SIGNATURE}"
        return self._db().execute(query, self._key(sig)).fetchone()

    def get_timing(self, sig: ConvSignature) -> Timing | None:
        """The cached Timing of `sig` on this backend as stored (no load correction), or None."""
        row = self._row(sig)
        return Timing(*row[:4], boundary_ms=row[5] or 0.0) if row else None

    def get(self, sig: ConvSignature) -> float | None:
        """Cached median latency (ms) of ``sig``, rescaled to today's load, or None (also for
        a row without a reference timing: it is measured again)."""
        return None if (got := self._cached(sig)) is None else got[0]

    def _cached(self, sig: ConvSignature) -> tuple[float, float] | None:
        """(median, boundary conversions) of `sig` in ms, rescaled to today's load (get)."""
        row = self._row(sig)
        if row is None or row[4] is None:
            return None
        shift = self._load_shift(row[4])
        if shift != 1.0:
            self.stats.rescaled += 1
        return row[0] * shift, (row[5] or 0.0) * shift

    def _load_shift(self, ref_ms: float) -> float:
        """Today's reference over `ref_ms` (a row's), or 1.0 within LOAD_SHIFT or when
        either is below the timer's resolution."""
        now = self.reference_ms()
        if min(now, ref_ms) < MIN_REFERENCE_MS or abs(now / ref_ms - 1.0) <= LOAD_SHIFT:
            return 1.0
        return now / ref_ms

    def reference_ms(self) -> float:
        """Today's time of the REFERENCE conv (ms), measured once per table object: the
        faster of two measurements, so a moment's disturbance is not taken for the load."""
        if self._ref_ms is None:
            self._ref_ms = self.measure(REFERENCE, times=2).median_ms
        return self._ref_ms

    def put(self, sig: ConvSignature, timing: Timing) -> None:
        """Store one measurement and commit it (one row per key: a re-measure replaces)."""
        conn = self._db()
        with conn:  # commits, or rolls back if interrupted midway
            conn.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*self._key(sig), timing.median_ms, timing.p10_ms, timing.p90_ms,
                 timing.repeats, time.time(), self.reference_ms(), timing.boundary_ms),
            )  # fmt: skip

    def network_ms(
        self,
        model: onnx.ModelProto,
        shapes: dict[str, tuple[int, ...]] | None,
        table_ms: float,
        what: str = "",
        digest: str | None = None,
        measure: Callable[[], float | None] | None = None,
    ) -> tuple[float | None, bool]:
        """(ms, from the cache): a whole network's end-to-end latency at `shapes`.

        Cached as its ratio to `table_ms`, the table latency of its convs, under a sha256 of
        its bytes, shapes and `what`: a later run gets that ratio times its own `table_ms`,
        following the table's load correction instead of freezing one moment's. `digest`: the
        model's sha256 when the caller has it (hashing ResNet-50 again costs a warm run 1 s+).
        `measure`: measured instead of the time (Backend.other_fraction with `table_ms` 1).
        """
        row = self._network_row(model, shapes, what, digest)
        if row is not None and table_ms > 0:
            return row[0] * table_ms, True
        ms = measure() if measure else time_model(model, self.backend, shapes).median_ms
        if ms is not None:
            self.put_network(model, shapes, table_ms, what, ms, digest, pooled=True)
        return ms, False

    def put_network(
        self,
        model: onnx.ModelProto,
        shapes: dict[str, tuple[int, ...]] | None,
        table_ms: float,
        what: str,
        ms: float,
        digest: str | None = None,
        pooled: bool = False,
        ref_ms: float | None = None,
    ) -> None:
        """Store a network's measured latency `ms` (as its ratio to `table_ms`, network_ms).
        `pooled` (an input network measured afresh): network_ms returns the median ratio of
        the last POOLED runs, this run's latest among them (a loaded moment read MobileNetV2's
        "other ops" 3.7 ms where quiet runs read 0.15-0.2). `ref_ms`: the reference conv's
        time when `ms` was measured (compare's pairs)."""
        if table_ms <= 0 or ms <= 0:
            return
        key, ratio = self._network_key(model, shapes, what, digest), ms / table_ms
        with self._db() as conn:
            if pooled:
                conn.execute(f"DELETE FROM network_runs {_WHERE_KEY} AND run=?", (*key, self.run))
                conn.execute(
                    "INSERT INTO network_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, self.run, ratio, time.time()),
                )
                query = f"SELECT ratio FROM network_runs {_WHERE_KEY} ORDER BY rowid DESC LIMIT ?"
                ratio = statistics.median(r for (r,) in conn.execute(query, (*key, POOLED)))
            conn.execute(
                "INSERT OR REPLACE INTO networks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, ratio, time.time(), ref_ms),
            )

    def compare(
        self,
        timed: onnx.ModelProto,
        model: onnx.ModelProto,
        shapes: dict[str, tuple[int, ...]] | None,
        digest: str | None,
        what: str,
        scale_ms: float = 1.0,
        fresh: bool = False,
    ) -> tuple[float, float, bool]:
        """(`timed`'s ms, `model`'s ms, from the cache): the two measured interleaved
        (compare_models), cached under `digest` (timed's sha256; None: not cached) and `what`
        (a plan's candidates) as ratios to `scale_ms` (network_ms's `table_ms`). A warm run
        reuses the pair, repeating its cold run's decisions instead of re-deciding on a
        moment's load (one ResNet-50 plan read 1.46x and 1.62x), unless the reference conv
        runs more than LOAD_SHIFT off its time beside the pair (a MobileNetV2 plan read 1.52x
        beside another job, 1.29-1.35x quiet). `fresh`: measure anyway, store the new pair."""
        pair = [f"{what} input", f"{what} output"]
        if digest and not fresh and scale_ms > 0:
            got = [self._network_row(None, shapes, w, digest) for w in pair]
            if all(r is not None and r[1] is not None and self._load_shift(r[1]) == 1.0
                   for r in got):  # fmt: skip
                return got[0][0] * scale_ms, got[1][0] * scale_ms, True
        t_a, t_b = compare_models(timed, model, self.backend, shapes)
        if digest:
            for w, ms in zip(pair, (t_a.median_ms, t_b.median_ms), strict=True):
                self.put_network(None, shapes, scale_ms, w, ms, digest, ref_ms=self.reference_ms())
        return t_a.median_ms, t_b.median_ms, False

    def _network_row(self, model, shapes, what: str, digest: str | None) -> tuple | None:
        """(ratio, ref_ms) of a cached network, or None."""
        query = f"SELECT ratio, ref_ms FROM networks {_WHERE_KEY}"
        return self._db().execute(query, self._network_key(model, shapes, what, digest)).fetchone()

    def _network_key(
        self, model, shapes, what: str, digest: str | None
    ) -> tuple[str, int, str, str]:
        if digest is None:
            digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
        h = hashlib.sha256(json.dumps([digest, what, sorted((shapes or {}).items())]).encode())
        return (h.hexdigest(), self.backend.batch, self.backend.dtype, self.fingerprint_hash)

    def __len__(self) -> int:
        """Rows measured with this backend fingerprint."""
        query = "SELECT COUNT(*) FROM latency WHERE fingerprint=?"
        return self._db().execute(query, (self.fingerprint_hash,)).fetchone()[0]

    # -- measuring ------------------------------------------------------------------------
    def measure(self, sig: ConvSignature, times: int = 1, boundary: bool = False) -> Timing:
        """Time the one-conv model of ``sig`` now (no cache involved); the fastest of `times`
        measurements, with its boundary conversions timed too when `boundary`."""
        model = conv_model(sig, batch=self.backend.batch, dtype=self.backend.dtype)
        data = model.SerializeToString()
        session = self.backend.load(data)
        try:
            feed = random_feed(model)
            timings = [self.backend.measure(session, feed) for _ in range(times)]
        finally:
            self.backend.release(session)
        best = min(timings, key=lambda t: t.median_ms)
        if not boundary:
            return best
        return replace(best, boundary_ms=self.backend.boundary_ms(data, feed))

    def measure_all(
        self,
        signatures: Iterable[ConvSignature],
        progress: bool = True,
        in_network: bool = False,
        refresh: bool = False,
    ) -> dict[ConvSignature, float]:
        """Median latency (ms) of every distinct signature, timing only those not cached
        (all with `refresh`); cached ones are corrected for load (module docstring). With
        `in_network`, what each conv adds inside a network, at least 5% of its time alone.

        Each new measurement is committed at once. On Ctrl-C the progress bar and database
        are closed and KeyboardInterrupt propagates; what was timed stays."""
        unique = list(dict.fromkeys(signatures))
        if in_network:
            unique.append(OVERHEAD)
        found: dict[ConvSignature, tuple[float, float]] = {}  # (median, boundary)
        for sig in [] if refresh else unique:
            got = self._cached(sig)
            if got is not None:
                found[sig] = got
        self.stats.hits += len(found)
        todo = [s for s in unique if s not in found]
        bar = tqdm(
            total=len(todo),
            desc=f"latency table ({self.backend.name})",
            unit="conv",
            disable=not progress or not todo,
            leave=False,
        )
        try:
            for sig in todo:
                got = None if refresh else self._cached(sig)  # a concurrent run may have timed it
                if got is None:
                    timing = self.measure(sig, boundary=True)
                    self.put(sig, timing)
                    got = timing.median_ms, timing.boundary_ms
                    self.stats.new += 1
                else:
                    self.stats.hits += 1
                found[sig] = got
                bar.set_postfix_str(f"{sig.key()[:40]} {got[0]:.3f} ms", refresh=False)
                bar.update()
        except KeyboardInterrupt:
            bar.close()
            self.close()
            raise
        bar.close()
        if not in_network:
            return {sig: found[sig][0] for sig in unique}
        base = max(found[OVERHEAD][0] - found[OVERHEAD][1], 0.0)
        return {s: max(found[s][0] - found[s][1] - base, 0.05 * found[s][0]) for s in unique[:-1]}

    def fingerprints(self) -> dict[str, Any]:
        """All backend fingerprints this cache holds rows for, by hash."""
        rows = self._db().execute("SELECT hash, json FROM fingerprints").fetchall()
        return {h: json.loads(j) for h, j in rows}
