"""CompressResult: what `compress` and `from_plan` produce, and the report they print."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from onnxmerge.analysis import Analysis
from onnxmerge.calibration.evaluation import EvaluationSet
from onnxmerge.calibration.network import GroupFit
from onnxmerge.kinds import Kind, Refit
from onnxmerge.plan import Plan
from onnxmerge.summary import Summary


def build(analysis: Analysis, kind: Kind, items, form: str = "merged"):
    """(model, {node name: Refit}) of `items` applied to a copy of the analyzed graph: the
    model and the nodes calibration refits or compensates (Kind.apply)."""
    model, nodes = analysis.rewrite(lambda g, m, names: kind.apply(g, m, items, form, names))
    refits = [n if isinstance(n, Refit) else Refit(n) for n in nodes]
    return model, {r.node.name: r for r in refits}


@dataclass
class CompressResult:
    """What `compress` / `from_plan` produced.

    `model`: the compressed network (ModelProto); `plan`: what was removed and merged, with
    the measured latencies; `candidates` and `signatures`: sizes of the latency table
    (candidate convs, distinct ones); `latency_hits` / `latency_new`: cached vs measured;
    `tries`: plans measured; `log`: report lines; `items`: the kind's chosen items (depth:
    Segments); `calibration`: per new conv, what the least-squares refit did;
    `importance_hits`: scores read from the cache; `original` and `feeds`: the input network
    as compress read it and the calibration inputs it fit on and held out (INT8 after it);
    `evaluation` makes the inputs the summary scores on (`scored`, when first asked for).
    """

    model: onnx.ModelProto
    plan: Plan
    candidates: int
    signatures: int
    latency_hits: int
    latency_new: int
    tries: int
    log: list[str] = field(default_factory=list)
    items: tuple = ()
    calibration: list[GroupFit] = field(default_factory=list)
    importance_hits: int = 0
    analysis: Analysis | None = field(default=None, repr=False)
    kind: Kind | None = field(default=None, repr=False)
    summarize: Callable[[Plan, EvaluationSet], Summary] | None = field(default=None, repr=False)
    original: onnx.ModelProto | None = field(default=None, repr=False)  # the input, analyzed
    feeds: tuple = field(default=((), ()), repr=False)  # (fit, held-out) calibration inputs
    evaluation: Callable[[], EvaluationSet | None] | None = field(default=None, repr=False)

    @functools.cached_property
    def scored(self) -> EvaluationSet:
        """The inputs the summary (and --int8's rows) score on (calibration.evaluation): made
        when first asked for; the held-out calibration inputs without `evaluation`."""
        found = self.evaluation() if self.evaluation is not None else None
        return found or EvaluationSet(list(self.feeds[1] or self.feeds[0]))

    @functools.cached_property
    def table(self) -> Summary | None:
        """Before -> after (summary.Summary), made when first asked for: the stages of
        `--prune both` are never asked, only their combination."""
        if self.summarize is None:
            return None
        return self.summarize(self.plan, self.scored)

    def summary(self, quiet: bool = False) -> list[str]:
        """The report as lines, as the CLI and the Polygraphy loader print it: what was
        measured and cached, the changed groups in words, and the before -> after table
        (`quiet`: the table alone)."""
        plan = self.plan
        table = self.table.lines() if self.table is not None else []
        if quiet:
            return table
        lines = [
            f"candidates {self.candidates} ({self.signatures} distinct convs; latency cache "
            f"{self.latency_hits} hits, {self.latency_new} measured; importance cache "
            f"{self.importance_hits} hits)",
            *self.log,
            *(f"  calibrated {fit}" for fit in self.calibration),
        ]
        lines += _width_lines(plan) if plan.prune != "depth" else []
        lines += _depth_lines(plan) if plan.prune != "width" else []
        target = "fastest plan" if plan.target_speedup is None else f"{plan.target_speedup:.3g}x"
        lines.append(
            f"measured {plan.measured_input_ms:.3f} -> {plan.measured_output_ms:.3f} ms on "
            f"{plan.backend} = {plan.measured_speedup:.2f}x (target {target}; predicted "
            f"{plan.predicted_ms:.3f} ms)"
        )
        return lines + table

    def rebuild(self, form: str = "merged") -> onnx.ModelProto:
        """The network of this plan again, uncalibrated: "merged" (plain kernel composition)
        or "finetune" (removed activations and pruned convs, unmerged, padding moved to each
        group's first conv; see README, "Exactness"). After kind="both", the depth stage's
        network on the calibrated width-pruned one."""
        return build(self.analysis, self.kind, self.items, form)[0]

    def finetune_graph(self) -> onnx.ModelProto:
        """The fine-tune form (rebuild("finetune"))."""
        return self.rebuild("finetune")


_DISTORTION_NOTE = (
    "  (distortion: how far the outputs move, KL or relative error on held-out calibration "
    "inputs, if that group alone were applied)"
)


_SPLAMP_NOTE = (
    "  (SP-LAMP score lost: the sum of the removed channels' scores, each channel's norm over "
    "the sum of the norms not below it; data-free, --width-importance splamp)"
)


def _width_lines(plan: Plan) -> list[str]:
    """The channel groups a width plan cut, in words."""
    splamp = plan.width_importance == "splamp"
    what = "SP-LAMP score lost" if splamp else "distortion"
    removed = sum(g.channels - g.width for g in plan.width)
    total = sum(g.channels for g in plan.width)
    lines = [
        f"width: {counted(len(plan.width), 'channel group')} cut, "
        f"{removed} of their {total} channels removed"
    ]
    for g in plan.width:
        tensor, more = g.members[0][0], len(g.members) - 1
        where = f"{tensor}" + (f" and {more} more tensors" if more else "")
        lines.append(
            f"  group {g.id} ({where}): {g.channels} -> {g.width} channels; "
            f"{g.latency_ms:.3f} ms, {what} {max(0.0, -g.importance):.3g}"
        )
    return lines + ([_SPLAMP_NOTE if splamp else _DISTORTION_NOTE] if plan.width else [])


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 group', '2 groups' ('2 biases' with nouns="biases")."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def _activations_removed(g) -> int:
    """The activations a group removed: the named ones (a plan before names were recorded:
    every interior position, counting projection convs that had none)."""
    return len(g.removed_activations) if g.removed_activations or g.convs else g.end - g.start - 1


def _depth_lines(plan: Plan) -> list[str]:
    """The chain groups a depth plan changed, in words."""
    changed = plan.changed_groups
    convs = sum(g.end - g.start for g in changed)
    lines = [
        f"changed: {counted(len(changed), 'group')}, {convs} convs -> "
        f"{len(changed)} ({counted(sum(len(g.pruned) for g in changed), 'layer')} pruned, "
        f"{counted(sum(map(_activations_removed, changed)), 'activation')} removed)"
    ]
    for g in changed:
        kernel = f"{g.kernel[0]}x{g.kernel[1]}"
        names = ", ".join(g.convs) or str(g.kept)
        parts = [f"merged {names} into one {kernel} conv" if len(g.kept) > 1 else
                     f"kept {names} as a {kernel} conv"]  # fmt: skip
        if g.pruned:
            parts.append(f"removed layers {', '.join(g.pruned_convs) or g.pruned}")
        if g.removed_activations:
            parts.append(f"removed activations {', '.join(g.removed_activations)}")
        lines.append(
            f"  {g.chain} ({g.start},{g.end}]: {'; '.join(parts)}; {g.latency_ms:.3f} ms, "
            f"distortion {max(0.0, -g.importance):.3g}"  # rounding can leave -1e-16
        )
    return lines + ([_DISTORTION_NOTE] if changed else [])
