"""Candidates: the merged convs each valid segment can become.

Per valid segment (s, e] of a chain (LayerMerge, ICML 2024): keep all convs, or prune some.
A conv may be pruned (replaced by the identity) only where that keeps shapes (same in/out
channels, stride 1, same size). Convs group by (kernel, dilation, depthwise); for every count
of kept convs per group, from the group's irreducible convs up to all of them, the kept subset
is the one with the largest weight L1 norm. Equal merged geometries collapse to one candidate.
Merged kernel K = 1 + sum_i d_i (k_i - 1) * (product of earlier strides), so long segments grow
large kernels; `max_kernel` drops candidates past it (they are slow everywhere).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxmerge.activations import latency_kind
from onnxmerge.chain import Chain, ConvSpec, Segment
from onnxmerge.geometry import merged_geometry
from onnxmerge.signature import ConvSignature


@dataclass(frozen=True)
class Candidate:
    """A segment and the one conv it becomes (what the latency table times)."""

    segment: Segment
    signature: ConvSignature

    @property
    def chain(self) -> int:
        """Index of the segment's chain in the Match."""
        return self.segment.chain

    @property
    def start(self) -> int:
        """Position the segment starts after."""
        return self.segment.start

    @property
    def end(self) -> int:
        """Position of the segment's last conv."""
        return self.segment.end

    @property
    def kept(self) -> tuple[int, ...]:
        """Positions of the convs kept."""
        return self.segment.kept

    @property
    def all_kept(self) -> bool:
        """No conv of the segment is pruned."""
        return self.segment.all_kept

    @property
    def unchanged(self) -> bool:
        """The candidate is the original single conv (Segment.unchanged)."""
        return self.segment.unchanged


def signature(chain: Chain, s: int, e: int, kept: tuple[int, ...]) -> ConvSignature:
    """The one conv that segment (s, e] becomes when the convs at `kept` are kept."""
    convs = [chain.conv(p) for p in kept]
    first, last = chain.conv(s + 1), chain.conv(e)
    if chain.lone_conv(s, e, kept):
        c = convs[0]
        kernel, stride, pads, dilation = c.kernel, c.stride, c.pads, c.dilation
    else:
        kernel, stride, pads = merged_geometry(
            [c.kernel for c in convs],
            [c.stride for c in convs],
            [c.dilation for c in convs],
            [c.pads for c in convs],
        )
        dilation = (1, 1)
    groups = 0
    for c in convs:
        groups = math.gcd(groups, c.groups)
    for r in chain.fused_residuals(s, e):
        if r.shortcut is not None:
            groups = math.gcd(groups, r.shortcut.groups)
    return ConvSignature(
        in_channels=first.in_channels,
        out_channels=last.out_channels,
        kernel=kernel,
        stride=stride,
        pads=pads,
        groups=groups or 1,
        in_hw=first.in_hw,
        dilation=dilation,
        activation=latency_kind(chain.activations[e]),
        residual=chain.explicit_residual(s, e) is not None,
    )


def _group_key(c: ConvSpec) -> tuple:
    return (c.kernel, c.dilation, c.depthwise)


def kept_subsets(
    chain: Chain, s: int, e: int, norms: dict[int, float] | None = None, prune: bool = True
) -> list[tuple[int, ...]]:
    """Kept-conv subsets for segment (s, e]: all convs, plus LayerMerge's pruned variants."""
    positions = list(range(s + 1, e + 1))
    if not prune:
        return [tuple(positions)]
    norms = norms or {}
    groups: dict[tuple, list[int]] = {}
    for p in positions:
        groups.setdefault(_group_key(chain.conv(p)), []).append(p)
    ranges = []
    for members in groups.values():
        prunable = [p for p in members if chain.conv(p).prunable]
        fixed = [p for p in members if p not in prunable]
        free = sorted(prunable, key=lambda p: -norms.get(p, 0.0))
        ranges.append([fixed + free[:n] for n in range(len(free) + 1)])
    subsets = []
    for combo in itertools.product(*ranges):
        kept = tuple(sorted(p for part in combo for p in part))
        if kept:
            subsets.append(kept)
    return subsets


def enumerate_candidates(
    chains: Sequence[Chain] | Mapping[int, Chain],
    norms: Mapping[int, dict[int, float]] | None = None,
    prune: bool = True,
    max_kernel: int = 7,
) -> list[Candidate]:
    """All candidates of all chains; length-1 unpruned segments are always included.

    `chains` is the Match's chains (a sequence: chain i is index i) or a mapping from Match
    index to chain (the mergeable ones); `norms[i][p]` is the L1 norm of conv p of chain i,
    which orders the convs LayerMerge keeps first.
    """
    items = chains.items() if isinstance(chains, Mapping) else enumerate(chains)
    out: list[Candidate] = []
    for ci, chain in items:
        for s, e in chain.valid_segments():
            seen: dict[ConvSignature, Candidate] = {}
            for kept in kept_subsets(chain, s, e, (norms or {}).get(ci), prune):
                sig = signature(chain, s, e, kept)
                if e - s > 1 and max(sig.kernel) > max_kernel:
                    continue
                # Same merged geometry: keep the variant with the most convs kept.
                if sig not in seen or len(kept) > len(seen[sig].kept):
                    seen[sig] = Candidate(Segment(ci, s, e, kept), sig)
            out.extend(seen.values())
    return out


def dominated(cands: list[Candidate], latency: dict[ConvSignature, float]) -> set[Candidate]:
    """Merged candidates no faster than their segment's convs left unchanged.

    The unchanged network is exact (distortion 0), so a candidate that is not faster than the
    original single convs of its segment can only lose: the DP never needs it. Dropping these
    before the importance table skips composing and scoring them (on ResNet-50 the wide
    2048-channel merges are most of the tool's cold time). The segment's Add (a residual the
    merge absorbs) is not in the table; it is small next to any conv it would tip.
    """
    single = {(c.chain, c.end): latency[c.signature] for c in cands if c.unchanged}
    out = set()
    for c in cands:
        if c.unchanged:
            continue
        parts = [single.get((c.chain, p)) for p in range(c.start + 1, c.end + 1)]
        if None not in parts and latency[c.signature] >= sum(parts):
            out.add(c)
    return out
