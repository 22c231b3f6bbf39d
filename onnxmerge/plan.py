"""Plan: what was removed and merged, and how it was measured, as dataclasses <-> JSON.

A plan is meant to be read by a person and reproduced by a program. Besides the groups it
records its provenance: the schema version and the onnxmerge version that wrote it, when,
the source model's sha256 and the input shapes it was analyzed and timed at, the calibration
data, and the backend's fingerprint. Each group names, by node, the convs it keeps (merged
into one), the convs it prunes ("removed layers") and the activations it removes.

JSON: every field below, plus computed keys for readers (`measured_speedup`, and per group
`changed`, `pruned`). Plans written by older versions (schema 1: no provenance, groups
without names) load: missing fields take their defaults.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = 2  # bump when a field changes meaning; new fields with defaults keep old plans loadable


@dataclass
class PlanGroup:
    """One segment (start, end] of a chain in the output: a merged conv, or an unchanged one.

    `kept`: positions of the convs kept (merged into one conv; the others are pruned);
    `kernel`: the merged conv's kernel; `latency_ms` and `importance` (minus the distortion
    if this group alone were applied) as the solver saw them; `activation_kept`: the kind of
    the activation at `end`, which stays. `convs`, `pruned_convs`, `removed_activations`:
    node names (`fuse --plan` finds the group in a fine-tune graph by `convs`).
    """

    chain: str
    start: int
    end: int
    kept: list[int]
    kernel: list[int]
    latency_ms: float
    importance: float
    activation_kept: str | None
    convs: list[str] = field(default_factory=list)
    pruned_convs: list[str] = field(default_factory=list)
    removed_activations: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[int]:
        """Positions of the convs the group prunes."""
        return [p for p in range(self.start + 1, self.end + 1) if p not in self.kept]

    @property
    def changed(self) -> bool:
        """The group changes the network (more than one conv, or a conv pruned)."""
        return self.end - self.start > 1 or bool(self.pruned)


@dataclass
class WidthGroup:
    """One channel dependency group in a width plan (kinds/width).

    `members`: [tensor, start, end] channel segments that move together; `channels`: its
    width in the source model; `kept`: the channel indices kept (width = len(kept)); latency
    and importance (minus the distortion if this group alone were cut) as the solver saw
    them.
    """

    id: int
    members: list[list]
    channels: int
    kept: list[int]
    latency_ms: float = 0.0
    importance: float = 0.0

    @property
    def width(self) -> int:
        """Channels kept."""
        return len(self.kept)


@dataclass
class Plan:
    """What a compression removed and merged, and what it measured (JSON via to_json).

    `method` and `backend` as given; `target_speedup` (None for "max"); `budget_ms`: the
    latency budget of the covered convs that the search settled on; `predicted_ms`: the
    table's prediction of the whole network; `measured_*_ms`: input and output timed end to
    end, interleaved; `groups`: one per segment of every chain; `fingerprint`: the
    backend's (runtime, device, threads, precision). Provenance: `schema`,
    `onnxmerge_version`, `created` (ISO 8601, UTC), `source` ({"sha256", "input_shapes"}),
    `calibration` ({"source", "count", "seed", "preprocess"}). `width_importance`: what each
    WidthGroup's importance is, "measured" (minus its measured distortion) or "splamp"
    (minus the SP-LAMP score of the channels it removes).
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
    schema: int = 1  # plans without the key are schema 1
    onnxmerge_version: str = ""
    created: str = ""
    source: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    prune: str = "depth"  # the compression kind (kinds.KINDS)
    width: list[WidthGroup] = field(default_factory=list)
    width_importance: str = "measured"

    @property
    def measured_speedup(self) -> float:
        """measured_input_ms / measured_output_ms."""
        return self.measured_input_ms / self.measured_output_ms

    @property
    def changed_groups(self) -> list[PlanGroup]:
        """The groups that change the network (merged or pruned)."""
        return [g for g in self.groups if g.changed]

    def to_json(self) -> str:
        """The plan as JSON text (with its measured speedup and per-group `changed`)."""
        d = asdict(self)
        d["measured_speedup"] = self.measured_speedup
        for g, group in zip(d["groups"], self.groups, strict=True):
            g["changed"], g["pruned"] = group.changed, group.pruned
        for g, group in zip(d["width"], self.width, strict=True):
            g["width"] = group.width
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """A plan from its JSON text (older plans included; computed keys are ignored)."""
        d = json.loads(text)
        names = {f.name for f in fields(cls)}
        group_names = {f.name for f in fields(PlanGroup)}
        d = {k: v for k, v in d.items() if k in names}
        d["groups"] = [
            PlanGroup(**{k: v for k, v in g.items() if k in group_names}) for g in d["groups"]
        ]
        width_names = {f.name for f in fields(WidthGroup)}
        d["width"] = [
            WidthGroup(**{k: v for k, v in g.items() if k in width_names})
            for g in d.get("width", [])
        ]
        if d.get("width_importance", "measured") not in ("measured", "splamp"):
            raise ValueError(f"unknown width_importance {d['width_importance']!r}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file; a missing or malformed one is a user error (OnnxMergeError)."""
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


def provenance(analysis: Any, calib, count: int, seed: int, pre: Any = None) -> dict:
    """The Plan fields that say where a plan comes from, for an onnxmerge.analysis.Analysis
    calibrated on `count` inputs of `calib` (a calibration source) prepared as `pre` (a
    calibration.preprocess.Preprocess; None: "torch")."""
    from onnxmerge import __version__
    from onnxmerge.calibration.data import source_text
    from onnxmerge.calibration.preprocess import TORCH

    pre = pre or TORCH
    return {
        "schema": SCHEMA,
        "onnxmerge_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {
            "sha256": analysis.sha256,
            "input_shapes": {k: list(v) for k, v in analysis.input_shapes.items()},
        },
        "calibration": {
            "source": source_text(calib),
            "count": count,
            "seed": seed,
            "preprocess": pre.record(),
        },
    }
