"""Latency is a staircase in channel count: find the step, offer only widths at stair edges.

Spec ``channel-pruning-spec.md`` §4.2-4.3. ONNX Runtime's fp32 CPU kernels (MLAS NCHWc) pad a
conv's output channels *up* to a block of 16 with AVX-512F (8 otherwise on x86-64) and take a
dense conv into NCHWc only if its input channels are a block multiple; GPUs quantize by tiles
and waves the same way (LACP's tail effect). Measured in §4.2 (AMD EPYC with AVX-512, ORT
1.32.0, fp32, batch 1, 1 thread; minimum over 7-11 rounds of per-round medians), latency in ms
by channel count c:

==========================================  =====================================================
1x1 conv 256->c, 14x14                      98-112: 0.113, 114-128: 0.128, 130-144: 0.141,
                                            146-160: 0.156
3x3 conv 64->c, 56x56                       40-48: 1.54-1.62, 49-64: 2.10-2.28, 65-80: 2.64-2.80
3x3 conv c->64, 56x56                       40/44/48: 1.54, 52-60: 2.05, 64: 2.17, 68-80:
                                            2.56-2.65; irregular off multiples of 4 (42: 1.64,
                                            62: 2.50, 78: 3.04)
3x3 64->c->64 (basic-block interior), 56x56 32: 2.07, 34-48: 2.9-3.4, 50-64: 4.1-4.5
depthwise 3x3, 28x28                        c a multiple of 4: 0.056-0.063 (c = 128-144),
                                            otherwise 0.21-0.24 (3.5-4x slower)
MBV2 block 32->c->dw->32, 28x28             100-112: 0.139, 116-128: 0.156, 132-144: 0.174,
                                            148-160: 0.192
==========================================  =====================================================

Stairs are exactly 16 wide with right edges at multiples of 16: a 64-wide group cut to 49 saves
2% (4.08 vs 4.18 ms), cut to 48 it saves 26%; unaligned widths can be slower than the unpruned
layer. So widths are never free integers:

1. :func:`probe_alignment` times a 1x1 and a 3x3 conv over a sweep of output channels (through a
   :class:`LatencyTable`, so a backend fingerprint is probed once) and returns the stair width a
   (:func:`detect_alignment`); :func:`default_alignment` is the fallback (§4.3.1).
2. :func:`width_options`: multiples of a between ``min_fraction`` of the width and the width,
   plus the width itself, thinned to at most 8 (§4.3.2-3).
3. :func:`stair_widths`: of those, the ones strictly faster than every wider one kept (the
   lower-right Pareto front, LACP's stair edges, §4.3.4); rows come from
   :func:`measure_widths` over :func:`resized` signatures.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from onnxmerge.latency.backend import Backend
from onnxmerge.latency.table import LatencyTable
from onnxmerge.signature import ConvSignature

#: Stair widths the probe can report, as in the spec (§4.3.1).
ALIGNMENTS: tuple[int, ...] = (4, 8, 16, 32, 64)

Side = Literal["in", "out"]
X86 = ("x86_64", "AMD64", "i686")  # where ORT's CPU convs run in MLAS's NCHWc blocks


def resized(
    sig: ConvSignature, in_channels: int | None = None, out_channels: int | None = None
) -> ConvSignature:
    """``sig`` with new channel counts (``None`` keeps a side); everything else unchanged.

    A depthwise conv (``groups == in_channels > 1``, ``out = m * in``) keeps its multiplier
    m: giving one side sets the other, and ``groups`` follows the input. A grouped conv keeps
    its groups, so both counts must stay multiples of them. ``ValueError`` for counts below 1,
    a depthwise conv given inconsistent sides, or channels a grouped conv cannot split.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if sig.groups > 1 and sig.groups == sig.in_channels:  # depthwise (multiplier m)
        m, rest = divmod(sig.out_channels, sig.in_channels)
        if rest:
            raise ValueError(f"{sig.key()}: depthwise output is not a multiple of its input")
        if in_channels is None and out_channels is not None:
            if out_channels % m:
                raise ValueError(
                    f"{sig.key()}: depthwise multiplier {m} does not divide {out_channels}"
                )
            in_channels = out_channels // m
        c_in = sig.in_channels if in_channels is None else int(in_channels)
        if out_channels is not None and out_channels != m * c_in:
            raise ValueError(
                f"{sig.key()}: a depthwise conv keeps out = {m} x in; "
                f"got in {c_in}, out {out_channels}"
            )
        return replace(sig, in_channels=c_in, out_channels=m * c_in, groups=c_in)
    c_in = sig.in_channels if in_channels is None else int(in_channels)
    c_out = sig.out_channels if out_channels is None else int(out_channels)
    if c_in % sig.groups or c_out % sig.groups:
        raise ValueError(
            f"{sig.key()}: {sig.groups} groups cannot split {c_in} in / {c_out} out channels"
        )
    return replace(sig, in_channels=c_in, out_channels=c_out)


@dataclass(frozen=True)
class Probe:
    """A sweep for the alignment probe: ``base`` with its ``side`` set to each of ``channels``."""

    base: ConvSignature
    channels: tuple[int, ...]
    side: Side = "out"

    def signatures(self) -> list[ConvSignature]:
        """The resized signatures, one per channel count, in ``channels`` order."""
        key = "in_channels" if self.side == "in" else "out_channels"
        return [resized(self.base, **{key: c}) for c in self.channels]


#: Output-channel sweeps (the clean side on ORT CPU, §4.2): 1x1 256->c at 14x14 for
#: c = 96..160 and 3x3 64->c at 28x28 for c = 32..96, every second count (66 timings).
PROBES: tuple[Probe, ...] = (
    Probe(ConvSignature(256, 128, (1, 1), (1, 1), (0, 0, 0, 0), 1, (14, 14)),
          tuple(range(96, 161, 2))),
    Probe(ConvSignature(64, 64, (3, 3), (1, 1), (1, 1, 1, 1), 1, (28, 28)),
          tuple(range(32, 97, 2))),
)  # fmt: skip


def _median_filter(t: np.ndarray, width: int) -> np.ndarray:
    """Running median (edges padded): removes bursts shorter than ``width // 2 + 1`` samples and
    leaves any monotone sequence, a clean staircase included, exactly as it is."""
    if width <= 1 or len(t) < width:
        return t
    half = width // 2
    padded = np.pad(t, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)


def detect_alignment(
    channels: Sequence[int],
    latency_ms: Sequence[float],
    candidates: Sequence[int] = ALIGNMENTS,
    *,
    contrast: float = 2.0,
    outliers: float = 0.25,
    min_jump: float = 0.01,
    smooth: int = 5,
) -> int | None:
    """The stair width of a latency sweep over channel counts, or ``None`` if it shows none.

    The sweep is first smoothed by a running median of ``smooth`` samples (load bursts of one
    or two samples go; a staircase is monotone and stays). For a candidate a, a step between
    consecutive samples *crosses* an edge when ``ceil(c / a)`` changes (stairs end at
    multiples of a). Let J be the median rise of the crossing steps. a fits when J is at least
    ``min_jump`` of the median latency and at most ``outliers`` x (number of crossings) of the
    other steps rise by more than ``J / contrast`` (longer bursts). The largest fitting
    candidate wins: a multiple of the true width fails (the true edges rise inside its stairs,
    about one per crossing), and so does a ramp (every step rises alike) or a flat, noisy
    curve (J ~ 0). A candidate needs two crossings and one other step in the sweep.
    """
    if len(channels) != len(latency_ms):
        raise ValueError(f"{len(channels)} channel counts but {len(latency_ms)} latencies")
    order = np.argsort(np.asarray(channels))
    c = np.asarray(channels, dtype=np.int64)[order]
    t = np.asarray(latency_ms, dtype=np.float64)[order]
    if len(c) < 3 or np.any(np.diff(c) <= 0) or not np.all(np.isfinite(t)):
        return None
    rise = np.diff(_median_filter(t, smooth))
    scale = float(np.median(t))
    for a in sorted(candidates, reverse=True):
        stair = -(-c // a)  # ceil(c / a)
        crossing = stair[1:] != stair[:-1]
        crossings = int(crossing.sum())
        if crossings < 2 or crossing.all():
            continue
        jump = float(np.median(rise[crossing]))
        inside = int(np.sum(rise[~crossing] > jump / contrast))
        if jump >= min_jump * scale and inside <= math.floor(outliers * crossings):
            return int(a)
    return None


def default_alignment(backend: Backend) -> int:
    """The alignment to assume when the probe shows none (§4.3.1).

    ORT CPU: 16 when the CPU has AVX-512F (MLAS's NCHWc block), else 8; int8 builds 32
    (unverified); everything else (GPU fp16/tf32 Tensor Cores) 8.
    """
    if backend.precision == "int8":
        return 32
    if backend.name == "ort-cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return 8
        return 16 if "avx512f" in flags.split() else 8
    return 8


def _table(table_or_backend: LatencyTable | Backend) -> LatencyTable:
    if isinstance(table_or_backend, LatencyTable):
        return table_or_backend
    return LatencyTable(None, table_or_backend)


def probe_alignment(
    table_or_backend: LatencyTable | Backend,
    probes: Sequence[Probe] = PROBES,
    *,
    candidates: Sequence[int] = ALIGNMENTS,
    contrast: float = 2.0,
    fallback: int | None = None,
    progress: bool = False,
    cached_only: bool = False,
) -> int | None:
    """The channel alignment of a backend: the stair width its conv latencies step at.

    Times every probe's sweep through the table (a backend gets the default cache,
    ``LatencyTable(None, backend)``), so a second probe on the same fingerprint only reads.
    Each sweep goes through :func:`detect_alignment`; the smallest width any sweep shows wins
    (a too-small alignment only offers more widths, which :func:`stair_widths` thins; a
    too-large one would hide real edges). When no sweep shows stairs: ``fallback``, or
    :func:`default_alignment`. With ``cached_only`` nothing is timed: None unless the table
    already holds every sweep (a stair width is a ratio, so the rows' load is not corrected).
    """
    table = _table(table_or_backend)
    sweeps = [probe.signatures() for probe in probes]
    flat = [s for sweep in sweeps for s in sweep]
    if cached_only:
        rows = {s: table.get_timing(s) for s in flat}
        if any(t is None for t in rows.values()):
            return None
        ms = {s: t.median_ms for s, t in rows.items()}
    else:
        ms = table.measure_all(flat, progress=progress)
    found = []
    for probe, sweep in zip(probes, sweeps, strict=True):
        a = detect_alignment(probe.channels, [ms[s] for s in sweep], candidates, contrast=contrast)
        if a is not None:
            found.append(a)
    be = table.backend
    if found and be.name == "ort-cpu" and be.precision != "int8" and platform.machine() in X86:
        # MLAS's NCHWc block is the finest stair there is; under load a probe can read a
        # coarser one (a review read 32 on one run and 16 on the next, one machine).
        return min(*found, default_alignment(be))
    if found:
        return min(found)
    return fallback if fallback is not None else default_alignment(table.backend)


def width_options(
    full: int,
    align: int,
    min_fraction: float = 0.25,
    max_options: int | None = 8,
    blocks: int = 1,
) -> list[int]:
    """Candidate widths of a group of ``full`` channels, ascending, ``full`` always last.

    The multiples of ``align`` in ``[ceil(min_fraction * full), full)``, plus ``full`` (§4.3.2).
    With more than ``max_options``, thinned to the widths at ``max_options`` ratios evenly
    spaced from 1 down to ``min_fraction``, each rounded down to a multiple of ``align`` (up to
    the smallest candidate when below it) (§4.3.3).

    A group that ``blocks`` conv groups split (a grouped conv's side) is cut per conv group:
    ``blocks`` times the options of one conv group, in steps of ``align`` where a conv group
    is at least ``2 * align`` wide, else of one channel. ORT CPU runs a grouped conv fast only
    at aligned widths per conv group (a RegNet 3x3 at 20 x 20 in 6 groups, in-network: 16
    channels each 0.03 ms, 12 each 0.13 ms); the screen keeps only widths that time faster.
    """
    if blocks > 1:
        per = full // blocks
        step = align if per >= 2 * align else 1
        return [blocks * k for k in width_options(per, step, min_fraction, max_options)]
    if not isinstance(full, int | np.integer) or full < 1:
        raise ValueError(f"full width must be a positive integer, got {full!r}")
    if not isinstance(align, int | np.integer) or align < 1:
        raise ValueError(f"alignment must be a positive integer, got {align!r}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    if max_options is not None and max_options < 1:
        raise ValueError(f"max_options must be at least 1, got {max_options!r}")
    floor = max(math.ceil(min_fraction * full - 1e-9), 1)
    low = -(-floor // align) * align  # smallest multiple of align >= floor
    raw = [*range(low, full, align), int(full)]
    if max_options is None or len(raw) <= max_options:
        return raw
    if max_options == 1:
        return [int(full)]
    ratios = np.linspace(1.0, min_fraction, max_options)
    thinned = {int(full)}
    for r in ratios[1:]:
        w = int(r * full + 1e-9) // align * align
        thinned.add(min(max(w, low), raw[-2]))
    return sorted(thinned)


def stair_widths(
    widths: Sequence[int],
    latency_ms: Sequence[float] | Mapping[int, float],
    tolerance: float = 0.02,
) -> list[int]:
    """The stair edges among ``widths``: each kept width is strictly faster than every wider
    kept one, by more than ``tolerance`` (relative), ascending.

    The widest is always kept; going down, ``w`` is kept iff ``(1 + tolerance) * T(w)`` is below
    the latency of the narrowest width kept so far (the spec's ε = 2%: drop ``w`` if a wider
    ``w'`` has ``T(w') <= (1 + ε) T(w)``). On a staircase this keeps each stair's right edge.
    ``latency_ms`` is aligned with ``widths`` or maps each width to its latency.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    if isinstance(latency_ms, Mapping):
        times = [float(latency_ms[w]) for w in widths]
    else:
        times = [float(x) for x in latency_ms]
        if len(times) != len(widths):
            raise ValueError(f"{len(widths)} widths but {len(times)} latencies")
    if len(set(widths)) != len(widths):
        raise ValueError(f"widths must be distinct, got {list(widths)}")
    kept: list[int] = []
    best = math.inf
    for w, ms in sorted(zip(widths, times, strict=True), reverse=True):
        if not kept or (1 + tolerance) * ms < best:
            kept.append(int(w))
            best = ms
    return kept[::-1]


def measure_widths(
    table: LatencyTable,
    sig: ConvSignature,
    widths: Sequence[int],
    side: Side = "out",
    *,
    progress: bool = False,
) -> dict[int, float]:
    """Latency (ms) of ``sig`` with its ``side`` at each width, the other side as it is.

    For a depthwise conv either side resizes both (:func:`resized`). Cached in ``table``.
    """
    if side not in ("in", "out"):
        raise ValueError(f"side must be 'in' or 'out', got {side!r}")
    key = "in_channels" if side == "in" else "out_channels"
    sigs = {int(w): resized(sig, **{key: int(w)}) for w in widths}
    ms = table.measure_all(sigs.values(), progress=progress)
    return {w: ms[s] for w, s in sigs.items()}
