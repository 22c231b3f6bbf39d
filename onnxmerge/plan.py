"""Plan: what was removed and merged, as plain dataclasses <-> JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxmerge.chain import Chain


@dataclass
class PlanGroup:
    """One segment of a chain in the output: a merged conv (or an unchanged one)."""

    chain: str
    start: int
    end: int
    kept: list[int]
    kernel: list[int]
    latency_ms: float
    importance: float
    activation_kept: str | None  # the activation at `end`, kept as a boundary
    # Node names of the kept convs, in order: `fuse --plan` finds the group in a fine-tune
    # graph by them (chain numbers can differ there). Empty in older plans.
    convs: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[int]:
        return [p for p in range(self.start + 1, self.end + 1) if p not in self.kept]


def groups_from_choices(
    chains: Sequence[Chain],
    choices: Mapping[int, Sequence[tuple[int, int, Sequence[int]]]],
    latency: Mapping[tuple[int, int, int], float] | None = None,
    importance: Mapping[tuple[int, int, int], float] | None = None,
) -> list[PlanGroup]:
    """The plan groups of `choices` (chain index -> [(start, end, kept)]), in chain order.

    `chains[i]` is chain i of the match (`[mc.chain for mc in match.chains]`); `latency` and
    `importance` map (chain index, start, end) to the group's figures (0.0 where missing).
    """
    from onnxmerge.candidates import signature

    groups = []
    for ci in sorted(choices):
        chain = chains[ci]
        for s, e, kept in sorted(choices[ci]):
            kept = tuple(kept)
            key = (ci, s, e)
            groups.append(
                PlanGroup(
                    chain.name,
                    s,
                    e,
                    list(kept),
                    list(signature(chain, s, e, kept).kernel),
                    float((latency or {}).get(key, 0.0)),
                    float((importance or {}).get(key, 0.0)),
                    chain.activations[e],
                    [chain.conv(p).name for p in kept],
                )
            )
    return groups


@dataclass
class Plan:
    method: str
    backend: str
    target_speedup: float | None  # None: the fastest plan was asked for (--speedup max)
    budget_ms: float
    predicted_ms: float
    measured_input_ms: float
    measured_output_ms: float
    groups: list[PlanGroup] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    @property
    def measured_speedup(self) -> float:
        return self.measured_input_ms / self.measured_output_ms

    def to_json(self) -> str:
        d = asdict(self)
        d["measured_speedup"] = self.measured_speedup
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        d.pop("measured_speedup", None)
        d["groups"] = [PlanGroup(**g) for g in d["groups"]]
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file; a missing or malformed one is a user error."""
        from pathlib import Path

        from onnxmerge.errors import OnnxMergeError

        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise OnnxMergeError(f"{path}: cannot read the plan ({exc.strerror})") from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OnnxMergeError(f"{path}: not an onnxmerge plan ({exc})") from None

    def save(self, path: str | os.PathLike) -> None:
        from pathlib import Path

        Path(path).write_text(self.to_json())
