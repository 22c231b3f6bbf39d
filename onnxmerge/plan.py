"""Plan: what was removed and merged, as plain dataclasses <-> JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


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
        """Positions of the convs the group prunes."""
        return [p for p in range(self.start + 1, self.end + 1) if p not in self.kept]


@dataclass
class Plan:
    """What a compression removed and merged, and what it measured (JSON via to_json).

    `method` and `backend` as given; `target_speedup` (None for "max"); `budget_ms`: the
    latency budget of the covered convs that the search settled on; `predicted_ms`: the
    table's prediction of the whole network; `measured_*_ms`: input and output timed
    end to end, interleaved; `groups`: one per segment of every chain; `fingerprint`: the
    backend's (runtime, device, threads, precision).
    """

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
        """measured_input_ms / measured_output_ms."""
        return self.measured_input_ms / self.measured_output_ms

    def to_json(self) -> str:
        """The plan as JSON text (with its measured speedup)."""
        d = asdict(self)
        d["measured_speedup"] = self.measured_speedup
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """A plan from its JSON text (older plans included)."""
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
        """Write the plan's JSON to `path`."""
        from pathlib import Path

        Path(path).write_text(self.to_json())
