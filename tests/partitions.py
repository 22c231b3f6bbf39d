"""Random plans for tests: a partition of every mergeable chain into candidate segments, and
the networks they build."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from onnxmerge.analysis import analyze
from onnxmerge.chain import Segment
from onnxmerge.compress import build
from onnxmerge.kinds.depth.candidates import Candidate, enumerate_candidates
from onnxmerge.kinds.depth.kind import DepthKind


def candidates_by_start(m, max_kernel: int = 9, longest: int | None = None) -> dict:
    """{(chain, start): [candidates]} of a match, segments up to `longest` convs long."""
    by_start: dict[tuple[int, int], list[Candidate]] = {}
    for c in enumerate_candidates([mc.chain for mc in m.chains], max_kernel=max_kernel):
        if longest is None or c.end - c.start <= longest:
            by_start.setdefault((c.chain, c.start), []).append(c)
    return by_start


def partition(m, by_start: dict, pick: Callable[[Sequence[Candidate]], Candidate]) -> list[Segment]:
    """Segments tiling each mergeable chain, walking it from position 0 and letting `pick`
    choose among the candidates that start where the last one ended."""
    out = []
    for ci, mc in enumerate(m.chains):
        if not mc.mergeable:
            continue
        pos = 0
        while pos < mc.chain.length:
            c = pick(by_start[(ci, pos)])
            out.append(c.segment)
            pos = c.end
    return out


def segs(choices: dict) -> list[Segment]:
    """Segments from {chain index: [(start, end, kept)]} (the short way tests write plans)."""
    return [Segment(ci, s, e, tuple(kept)) for ci, cs in choices.items() for s, e, kept in cs]


def build_segments(model, segments, form: str = "merged", input_shapes=None) -> onnx.ModelProto:
    """The merged (or fine-tune) network of `segments` (or a {chain: [(s, e, kept)]} dict)."""
    if isinstance(segments, dict):
        segments = segs(segments)
    return build(analyze(model, input_shapes), DepthKind(), segments, form)[0]
