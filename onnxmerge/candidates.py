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
from dataclasses import dataclass

from onnxmerge.chain import Chain, ConvSpec
from onnxmerge.compose import merged_geometry
from onnxmerge.signature import ConvSignature


@dataclass(frozen=True)
class Candidate:
    chain: int  # index of the chain in the problem
    start: int
    end: int
    kept: tuple[int, ...]  # positions of the convs kept in (start, end]
    signature: ConvSignature

    @property
    def all_kept(self) -> bool:
        return len(self.kept) == self.end - self.start

    @property
    def unchanged(self) -> bool:
        """The candidate is the original single conv (a length-1 segment)."""
        return self.end - self.start == 1 and self.all_kept


def signature(chain: Chain, s: int, e: int, kept: tuple[int, ...]) -> ConvSignature:
    """The one conv that segment (s, e] becomes when the convs at `kept` are kept."""
    convs = [chain.conv(p) for p in kept]
    first, last = chain.conv(s + 1), chain.conv(e)
    if len(convs) == 1 and not chain.fused_residuals(s, e):
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
        activation=_latency_kind(chain.activations[e]),
        residual=chain.explicit_residual(s, e) is not None,
    )


def _latency_kind(kind: str | None) -> str | None:
    # "other" activations (Elu, Softplus, ...) are timed as the common pointwise op they cost
    # about as much as.
    return "relu" if kind == "other" else kind


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
        fixed = [p for p in members if not chain.conv(p).prunable]
        free = sorted(
            (p for p in members if chain.conv(p).prunable), key=lambda p: -norms.get(p, 0.0)
        )
        ranges.append([fixed + free[:n] for n in range(len(free) + 1)])
    subsets = []
    for combo in itertools.product(*ranges):
        kept = tuple(sorted(p for part in combo for p in part))
        if kept:
            subsets.append(kept)
    return subsets


def enumerate_candidates(
    chains: list[Chain],
    norms: list[dict[int, float]] | None = None,
    prune: bool = True,
    max_kernel: int = 7,
) -> list[Candidate]:
    """All candidates of all chains; length-1 unpruned segments are always included."""
    out: list[Candidate] = []
    for ci, chain in enumerate(chains):
        for s, e in chain.valid_segments():
            seen: dict[ConvSignature, Candidate] = {}
            for kept in kept_subsets(chain, s, e, norms[ci] if norms else None, prune):
                sig = signature(chain, s, e, kept)
                if e - s > 1 and max(sig.kernel) > max_kernel:
                    continue
                # Same merged geometry: keep the variant with the most convs kept.
                if sig not in seen or len(kept) > len(seen[sig].kept):
                    seen[sig] = Candidate(ci, s, e, kept, sig)
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
