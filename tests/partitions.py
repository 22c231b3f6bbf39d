"""Random plans for tests: a partition of every mergeable chain into candidate segments."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onnxmerge.candidates import Candidate, enumerate_candidates


def candidates_by_start(m, max_kernel: int = 9, longest: int | None = None) -> dict:
    """{(chain, start): [candidates]} of a match, segments up to `longest` convs long."""
    by_start: dict[tuple[int, int], list[Candidate]] = {}
    for c in enumerate_candidates([mc.chain for mc in m.chains], max_kernel=max_kernel):
        if longest is None or c.end - c.start <= longest:
            by_start.setdefault((c.chain, c.start), []).append(c)
    return by_start


def partition(m, by_start: dict, pick: Callable[[Sequence[Candidate]], Candidate]) -> dict:
    """Chain index -> [(start, end, kept)], walking each mergeable chain from position 0 and
    letting `pick` choose among the candidates that start where the last one ended."""
    choices = {}
    for ci, mc in enumerate(m.chains):
        if not mc.mergeable:
            continue
        pos, segs = 0, []
        while pos < mc.chain.length:
            c = pick(by_start[(ci, pos)])
            segs.append((c.start, c.end, c.kept))
            pos = c.end
        choices[ci] = segs
    return choices
