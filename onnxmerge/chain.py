"""Chains: a network seen as runs of conv slots, as plain data (no ONNX import).

A chain holds L convs. Position p (0..L) is the tensor right after conv p, after the residual
Add that ends at p (if any) and after the activation at p (if any); position 0 is the chain
input. A segment (s, e] is the run of convs s+1..e: the unit that becomes one merged conv.

A segment is valid when it straddles no break (s < b < e) and is laminar with every residual
interval [p, q]: inside it (p <= s < e <= q), containing it (s <= p, q <= e) or disjoint.
A residual contained in a segment is folded into the merged kernel (identity at the centre
tap, or the shortcut conv's kernel); a segment inside a residual leaves the Add explicit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxmerge.geometry import out_hw


@dataclass(frozen=True)
class ConvSpec:
    """One 2-D convolution as the matcher found it (shapes only, no weights)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    in_hw: tuple[int, int] = (0, 0)

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (H, W) for `in_hw`."""
        return out_hw(self.in_hw, self.kernel, self.stride, self.dilation, self.pads)

    @property
    def depthwise(self) -> bool:
        """One input channel per group, every channel its own group."""
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def prunable(self) -> bool:
        """A conv may be replaced by the identity only where that keeps every shape."""
        return (
            self.in_channels == self.out_channels
            and self.stride == (1, 1)
            and self.out_hw == self.in_hw
        )


@dataclass(frozen=True)
class Segment:
    """Convs start+1..end of chain `chain` (an index into the Match), keeping those at `kept`.

    The one name for a place in the network: candidates, solver entries, plans, importance
    jobs and cache keys all use it. Pruned convs (positions not in `kept`) become identities.
    """

    chain: int
    start: int
    end: int
    kept: tuple[int, ...]

    @property
    def all_kept(self) -> bool:
        """No conv of the segment is pruned."""
        return len(self.kept) == self.end - self.start

    @property
    def unchanged(self) -> bool:
        """One original conv with nothing removed: its distortion is 0 by definition."""
        return self.end - self.start == 1 and self.all_kept

    @property
    def pruned(self) -> tuple[int, ...]:
        """Positions of the convs this segment prunes."""
        return tuple(p for p in range(self.start + 1, self.end + 1) if p not in self.kept)

    def key(self) -> str:
        """A stable text key (importance cache)."""
        return f"{self.chain}:{self.start}:{self.end}:{','.join(map(str, self.kept))}"


@dataclass(frozen=True)
class Residual:
    """An Add at position `end` of the tensor at position `start` (through `shortcut` if set)."""

    start: int
    end: int
    shortcut: ConvSpec | None = None
    # Fine-tune graphs align the skip to the larger relocated map: the skip input is cropped
    # (Slice, top/left/bottom/right) or zero-padded (Pad) before the shortcut or the Add.
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class Break:
    """An interior position no segment may straddle, and why."""

    position: int
    reason: str


@dataclass
class Chain:
    """A run of convs with their activations, residual intervals and breaks."""

    name: str
    convs: list[ConvSpec]
    activations: list[str | None]  # length L + 1; activations[p] follows conv p (index 0 unused)
    residuals: list[Residual] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)
    input_from: str = ""  # what produces the chain input (for reports)
    output_to: str = ""  # what consumes the chain output (for reports)
    # Positions whose activation has its own trailing affine: removing it leaves that affine
    # (folded into the conv there, or a 1x1 depthwise conv where that conv is pruned).
    affine_at: frozenset[int] = frozenset()

    @property
    def length(self) -> int:
        """Number of convs (positions 1..length)."""
        return len(self.convs)

    def conv(self, p: int) -> ConvSpec:
        """Conv number p (1-based, as positions count)."""
        return self.convs[p - 1]

    def residual_ending_at(self, q: int) -> Residual | None:
        """The residual whose Add sits at position q, if any."""
        return next((r for r in self.residuals if r.end == q), None)

    def is_valid(self, s: int, e: int) -> bool:
        """Whether (s, e] crosses no break and is laminar with every residual."""
        if not 0 <= s < e <= self.length:
            return False
        if any(s < b.position < e for b in self.breaks):
            return False
        for r in self.residuals:
            inside = r.start <= s and e <= r.end
            contains = s <= r.start and r.end <= e
            disjoint = e <= r.start or r.end <= s
            if not (inside or contains or disjoint):
                return False
        return True

    def valid_segments(self) -> list[tuple[int, int]]:
        """All valid (s, e), sorted by s then e."""
        n = self.length
        return [(s, e) for s in range(n) for e in range(s + 1, n + 1) if self.is_valid(s, e)]

    def lone_conv(self, s: int, e: int, kept: tuple[int, ...]) -> bool:
        """Segment (s, e] is just its one kept conv as it is (dilation included): nothing is
        composed with it (no folded residual, no affine left by a removed activation)."""
        return (
            len(kept) == 1
            and not self.fused_residuals(s, e)
            and not any(s < p < e for p in self.affine_at)
        )

    def fused_residuals(self, s: int, e: int) -> list[Residual]:
        """Residuals a segment folds into its merged kernel, innermost first."""
        inner = [r for r in self.residuals if s <= r.start and r.end <= e]
        return sorted(inner, key=lambda r: (r.end - r.start, r.start))

    def explicit_residual(self, s: int, e: int) -> Residual | None:
        """The residual whose Add stays after a segment ending at e (it starts before s)."""
        r = self.residual_ending_at(e)
        return r if r is not None and r.start < s else None
