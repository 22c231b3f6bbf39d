"""latency/staircase.py: resized signatures, the alignment probe, width candidates, stair edges.

The probe runs on a FAKE backend that runs nothing: its time is computed from the conv in the
model it was given (weight shape and input size), with output channels padded up to a step, as
MLAS pads them to its NCHWc block. So the probe must find the step, and the stair edges must be
the multiples of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmerge.latency import Backend, LatencyTable, MeasurePolicy
from onnxmerge.latency.models import conv_model
from onnxmerge.latency.staircase import (
    PROBES,
    Probe,
    default_alignment,
    detect_alignment,
    measure_widths,
    probe_alignment,
    resized,
    stair_widths,
    width_options,
)
from onnxmerge.latency.table import REFERENCE
from onnxmerge.signature import ConvSignature

ONE_SHOT = MeasurePolicy(
    warmup_runs=1, warmup_s=0.0, block_s=0.0, min_block=1, max_block=1, window=1, max_s=0.0
)


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """probe_alignment(backend) uses the default cache: keep it (and ~) in tmp."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ONNXMERGE_CACHE", str(tmp_path / "cache"))


class StairBackend(Backend):
    """Times nothing: a conv costs MACs with output channels padded up to ``step``.

    ``step=None`` is a smooth ramp (no stairs); ``noise`` is a seeded relative jitter.
    """

    name = "stairs"

    def __init__(self, step: int | None = 16, noise: float = 0.0, **common: Any) -> None:
        super().__init__(policy=ONE_SHOT, **common)
        self.step, self.noise, self.loads = step, noise, 0
        self.rng = np.random.default_rng(0)
        self.reference = conv_model(REFERENCE).SerializeToString()

    def _fingerprint_impl(self) -> dict[str, Any]:
        return {"step": self.step, "noise": self.noise}

    def load(self, onnx_bytes: bytes) -> float:
        self.loads += onnx_bytes != self.reference
        model = onnx.load_from_string(onnx_bytes)
        weight = next(t for t in model.graph.initializer if t.name == "conv_w")
        c_out, c_in_per_group, kh, kw = numpy_helper.to_array(weight).shape
        h, w = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
        padded = c_out if self.step is None else math.ceil(c_out / self.step) * self.step
        return 1e-6 + 1e-11 * padded * c_in_per_group * kh * kw * h * w

    def _run_once(self, prepared: Any) -> None:
        pass

    def _time_once(self, prepared: Any) -> float:
        seconds, _feed = prepared
        return seconds * (1 + self.noise * self.rng.standard_normal())


def conv(c_in: int, c_out: int, k: int = 3, groups: int = 1, hw: int = 28) -> ConvSignature:
    p = k // 2
    return ConvSignature(c_in, c_out, (k, k), (1, 1), (p, p, p, p), groups, (hw, hw))


# -- resized ----------------------------------------------------------------------------------
def test_resized_dense_and_grouped() -> None:
    s = conv(64, 128)
    assert resized(s, out_channels=96) == conv(64, 96)
    assert resized(s, in_channels=48) == conv(48, 128)
    assert resized(s, 32, 16) == conv(32, 16)
    assert resized(s) == s
    act = ConvSignature(8, 8, (1, 1), (1, 1), (0,) * 4, 1, (4, 4), activation="relu", residual=True)
    out = resized(act, out_channels=16)
    assert (out.activation, out.residual, out.out_channels) == ("relu", True, 16)
    grouped = conv(64, 64, groups=4)
    assert resized(grouped, 32, 48) == conv(32, 48, groups=4)
    with pytest.raises(ValueError, match="groups cannot split"):
        resized(grouped, out_channels=50)
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            resized(s, out_channels=bad)


def test_resized_depthwise_groups_follow() -> None:
    dw = conv(64, 64, groups=64)
    assert resized(dw, in_channels=48) == conv(48, 48, groups=48)
    assert resized(dw, out_channels=32) == conv(32, 32, groups=32)
    assert resized(dw, 16, 16) == conv(16, 16, groups=16)
    with pytest.raises(ValueError, match="depthwise"):
        resized(dw, 16, 32)
    mult = conv(32, 64, groups=32)  # depthwise with multiplier 2
    assert resized(mult, in_channels=16) == conv(16, 32, groups=16)
    assert resized(mult, out_channels=48) == conv(24, 48, groups=24)
    with pytest.raises(ValueError, match="multiplier"):
        resized(mult, out_channels=33)
    # One channel, one group: a dense conv, not depthwise.
    assert resized(conv(1, 8), out_channels=4) == conv(1, 4)


# -- detection on numbers ------------------------------------------------------------------------
def test_detects_the_spec_measurements() -> None:
    """§4.2: 1x1 256->c at 14x14 on ORT CPU with AVX-512, and 3x3 64->c with drift in a stair."""
    c = list(range(98, 161, 2))
    t = [0.113 if x <= 112 else 0.128 if x <= 128 else 0.141 if x <= 144 else 0.156 for x in c]
    assert detect_alignment(c, t) == 16
    # Stairs (first, last, ms at first, ms at last), latency rising linearly inside each.
    stairs = [(40, 48, 1.54, 1.62), (49, 64, 2.10, 2.28), (65, 80, 2.64, 2.80)]
    c = list(range(40, 81, 2))
    t = [lo + (hi - lo) * (x - a) / (b - a) for x in c for a, b, lo, hi in stairs if a <= x <= b]
    assert detect_alignment(c, t) == 16


def test_detect_rejects_ramps_flat_noise_and_short_sweeps() -> None:
    c = list(range(32, 97, 2))
    assert detect_alignment(c, [0.01 * x for x in c]) is None  # ramp
    rng = np.random.default_rng(1)
    assert detect_alignment(c, list(1 + 0.01 * rng.standard_normal(len(c)))) is None
    assert detect_alignment([32, 48], [1.0, 2.0]) is None
    stairs8 = [math.ceil(x / 8) for x in c]
    assert detect_alignment(c, stairs8) == 8
    assert detect_alignment(c, stairs8, candidates=(16, 32)) is None
    with pytest.raises(ValueError, match="latencies"):
        detect_alignment(c, stairs8[:-1])


# 3x3 64->c at 28x28 on ORT CPU, a 2-core AVX2 machine (no AVX-512: block 8) shared with other
# jobs, one sweep through LatencyTable: 8-wide stairs with load bursts at 50 and 80-92.
NOISY_3X3 = [
    0.3193, 0.4487, 0.4493, 0.4504, 0.4485, 0.4885, 0.4926, 0.491, 0.4941, 0.6347, 0.5513,
    0.5504, 0.5518, 0.6364, 0.6268, 0.6247, 0.6391, 0.7198, 0.7226, 0.7323, 0.726, 0.7895,
    0.7978, 0.8019, 1.0172, 1.0947, 1.0753, 1.0793, 1.0883, 1.1293, 1.118, 0.9438, 0.9405,
]  # fmt: skip


def test_detect_survives_load_bursts() -> None:
    assert detect_alignment(range(32, 97, 2), NOISY_3X3) == 8
    c = np.arange(96, 161, 2)
    t = np.ceil(c / 16).astype(float)
    for burst in ([102], [118, 120], [132, 134, 136]):  # short bursts inside stairs
        spiked = t.copy()
        spiked[np.isin(c, burst)] += 3.0
        assert detect_alignment(c, spiked) == 16, burst
    assert detect_alignment(c, t, smooth=1) == 16


# -- probe on a fake backend ---------------------------------------------------------------------
@pytest.mark.parametrize("step", [8, 16, 32])
def test_probe_finds_the_step(tmp_path: Path, step: int) -> None:
    table = LatencyTable(tmp_path, StairBackend(step))
    assert probe_alignment(table) == step


@pytest.mark.parametrize("step", [8, 16])
def test_probe_tolerates_noise(tmp_path: Path, step: int) -> None:
    assert probe_alignment(LatencyTable(tmp_path, StairBackend(step, noise=0.005))) == step


def test_probe_is_cached_per_fingerprint(tmp_path: Path) -> None:
    first = StairBackend(16)
    assert probe_alignment(LatencyTable(tmp_path, first)) == 16
    assert first.loads == sum(len(p.channels) for p in PROBES)
    again = StairBackend(16)
    assert probe_alignment(LatencyTable(tmp_path, again)) == 16
    assert again.loads == 0
    other = StairBackend(8)  # a different fingerprint: measured anew
    assert probe_alignment(LatencyTable(tmp_path, other)) == 8 and other.loads > 0


def test_ort_cpu_probe_caps_at_the_nchwc_block(tmp_path: Path, monkeypatch) -> None:
    """On x86 ort-cpu a probe that reads 32-wide stairs (a loaded moment) is capped at MLAS's
    block (default_alignment: 16 with AVX-512, else 8); other backends keep what they read."""
    from onnxmerge.latency import staircase

    class FakeOrt(StairBackend):
        name = "ort-cpu"

    monkeypatch.setattr(staircase.platform, "machine", lambda: "x86_64")
    fake = FakeOrt(32)
    assert probe_alignment(LatencyTable(tmp_path, fake)) == default_alignment(fake) < 32
    monkeypatch.setattr(staircase.platform, "machine", lambda: "aarch64")
    assert probe_alignment(LatencyTable(tmp_path, FakeOrt(32))) == 32
    assert probe_alignment(LatencyTable(tmp_path, StairBackend(32))) == 32


def test_probe_cached_only_times_nothing(tmp_path: Path) -> None:
    """cached_only (inspect's default): None on an empty cache, nothing timed, then the
    full probe's answer once the rows are there, still without timing."""
    empty = StairBackend(16)
    assert probe_alignment(LatencyTable(tmp_path, empty), cached_only=True) is None
    assert empty.loads == 0
    assert probe_alignment(LatencyTable(tmp_path, StairBackend(16))) == 16
    again = StairBackend(16)
    assert probe_alignment(LatencyTable(tmp_path, again), cached_only=True) == 16
    assert again.loads == 0


def test_probe_takes_a_backend_and_falls_back_without_stairs(tmp_path: Path) -> None:
    ramp = StairBackend(None)
    assert probe_alignment(ramp, fallback=4) == 4
    assert probe_alignment(ramp) == default_alignment(ramp) == 8
    # A custom sweep on the input side: no padding there in the fake, so no stairs.
    sweep = Probe(conv(64, 64, k=1), tuple(range(32, 97, 4)), side="in")
    assert probe_alignment(LatencyTable(tmp_path, StairBackend(16)), [sweep], fallback=2) == 2


# -- candidate widths and stair edges ------------------------------------------------------------
def test_width_options() -> None:
    assert width_options(64, 16) == [16, 32, 48, 64]
    # per conv group: aligned where a conv group is 2 x align wide, else channel by channel
    assert width_options(128, 16, blocks=2) == [32, 64, 96, 128]
    assert width_options(48, 16, blocks=3) == [3 * k for k in width_options(16, 1)]
    assert width_options(96, 16, 0.5, None, blocks=6) == [6 * k for k in range(8, 17)]
    assert width_options(64, 8) == [16, 24, 32, 40, 48, 56, 64]
    assert width_options(100, 16, 0.5) == [64, 80, 96, 100]  # the full width is not aligned
    assert width_options(12, 16) == [12]  # narrower than one block
    assert width_options(64, 16, 1.0) == [64]
    assert width_options(256, 16) == [64, 80, 112, 144, 160, 192, 224, 256]  # thinned to 8
    assert width_options(256, 16, max_options=None) == list(range(64, 257, 16))
    assert width_options(256, 16, max_options=1) == [256]
    for full, align, frac in [(1000, 8, 0.1), (512, 32, 0.25), (96, 4, 0.3)]:
        opts = width_options(full, align, frac)
        assert len(opts) <= 8 and opts[-1] == full and opts == sorted(set(opts))
        assert all(w % align == 0 and w >= frac * full for w in opts[:-1])
    with pytest.raises(ValueError):
        width_options(64, 0)
    with pytest.raises(ValueError):
        width_options(64, 16, 0.0)


def test_stair_widths_keep_right_edges() -> None:
    widths = list(range(8, 65, 4))
    steps16 = {w: math.ceil(w / 16) for w in widths}
    assert stair_widths(widths, steps16) == [16, 32, 48, 64]
    assert stair_widths(widths, [steps16[w] for w in widths]) == [16, 32, 48, 64]
    # Within tolerance counts as no faster: 2% is not enough at 2%, 3% is.
    assert stair_widths([32, 64], [1.0 / 1.02, 1.0]) == [64]
    assert stair_widths([32, 64], [1.0 / 1.03, 1.0]) == [32, 64]
    assert stair_widths([32, 64], [1.0 / 1.02, 1.0], tolerance=0.0) == [32, 64]
    # An unaligned width slower than the full one (Torch-Pruning#38) is never offered.
    assert stair_widths([49, 64], [4.5, 4.18]) == [64]
    assert stair_widths([64], [1.0]) == [64] and stair_widths([], []) == []
    with pytest.raises(ValueError, match="distinct"):
        stair_widths([32, 32], [1.0, 1.0])
    with pytest.raises(ValueError, match="latencies"):
        stair_widths([32, 64], [1.0])


@pytest.mark.parametrize("step", [8, 16])
def test_stair_edges_from_measured_rows(tmp_path: Path, step: int) -> None:
    table = LatencyTable(tmp_path, StairBackend(step))
    align = probe_alignment(table)
    assert align == step
    # Offer widths at half the alignment: stair_widths must drop those inside a stair.
    widths = width_options(64, align // 2, 0.25, max_options=None)
    row = measure_widths(table, conv(64, 64), widths, "out")
    assert set(row) == set(widths)
    assert stair_widths(widths, row) == [w for w in widths if w % step == 0]
    # Depthwise: resizing the output resizes the input and the groups with it.
    dw = measure_widths(table, conv(64, 64, groups=64), [32, 64], "out")
    assert dw[32] < dw[64]
    with pytest.raises(ValueError, match="side"):
        measure_widths(table, conv(64, 64), [32], "both")  # type: ignore[arg-type]
