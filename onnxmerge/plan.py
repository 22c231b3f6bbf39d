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

    @property
    def pruned(self) -> list[int]:
        return [p for p in range(self.start + 1, self.end + 1) if p not in self.kept]


@dataclass
class Plan:
    method: str
    backend: str
    target_speedup: float
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

    def save(self, path: str | os.PathLike) -> None:
        from pathlib import Path

        Path(path).write_text(self.to_json())
