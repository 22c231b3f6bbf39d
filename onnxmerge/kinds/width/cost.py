"""What a width plan costs: the knapsack's additive shares and the product prediction.

Shares (linearized, as HALP does). Every conv the table times (2-D and 1-D Conv, 2-D
ConvTranspose) is charged in equal shares to the groups it touches (the groups its input and
output channels belong to), each share timed with that group's channels at the candidate's
width and the rest at full width; a depthwise conv belongs to the group it is tied to.
Shares on fixed groups never change and stay in the network's remainder, as do Gemm/MatMul
heads and the activations. The sum over groups is what the multiple-choice knapsack needs,
but it under-prices every cut that narrows a conv on more than one side: with time T at full
width and fractions a, b of it left by each side alone, the shares say T (a + b) / 2 where
the conv runs in about T a b (a conv's work is the product of its input and output
channels), and a conv with one fixed side T (1 + a) / 2 where it runs
in T a. Measured on the ResNet-18 replica: a plan predicted at 1.5x ran 2.56x.

Product prediction. So a plan's latency is predicted conv by conv as

    T_l(plan) = T_l * prod over the groups g touching l of  T_l(g at its width) / T_l

(each factor one table entry: the conv with only g narrowed), and the covered part of the
network as the shares' unchanged total less the sum of T_l - T_l(plan).

Between the convs. Activations, residual Adds, pools, SE gates and layout reorders run over
the groups' tensors and shrink with them: memory-bound, so their time goes with the tensors'
volume (spec §4.1's alpha * E_g * w_g). The network's time outside the table's convs is
spread over the groups by volume (channels x H x W of their member tensors, `volumes`), and a
group's part goes with its width. On EfficientNet-B0 (width, 224) that remainder is 6.4 of
8.7 ms: held fixed, a plan predicted at 1.23x measured 1.71x. `Predictor.solve`
gives the knapsack's most important plan whose *predicted* latency fits a budget, by
bisection over the knapsack's own budget (the shares' total never undercuts the product).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from onnxmerge.graph.conv import conv1d_spec, conv_spec, transpose_spec
from onnxmerge.graph.tensors import static_shape
from onnxmerge.kinds.width.groups import Group
from onnxmerge.kinds.width.rules import name_of
from onnxmerge.signature import ConvSignature
from onnxmerge.solve import InfeasibleBudget
from onnxmerge.solve.knapsack import KnapsackSolution

BISECTIONS = 20  # at most this many knapsack solves per Predictor.solve (ms each)


@dataclass(frozen=True)
class Share:
    """A conv's share of one group: how many of its output / input segments the group fills,
    whether it is tied (depthwise), and the fraction of its latency charged to the group."""

    conv: str
    sig: ConvSignature
    outs: int
    ins: int
    tied: bool
    weight: float

    def at(self, cut: int) -> ConvSignature:
        """The conv with this group's channels `cut` fewer."""
        from onnxmerge.latency.staircase import resized

        if not cut:
            return self.sig
        if self.tied:
            return resized(self.sig, in_channels=self.sig.in_channels - cut)
        return resized(
            self.sig,
            in_channels=self.sig.in_channels - cut * self.ins if self.ins else None,
            out_channels=self.sig.out_channels - cut * self.outs if self.outs else None,
        )


def _signature(node) -> ConvSignature | None:
    """A 2-D or 1-D Conv's or a 2-D ConvTranspose's signature (None for other convs: their
    time stays in the network's remainder)."""
    s, extra = conv_spec(node), {}
    if s is None and (s := conv1d_spec(node)) is not None:
        extra = {"rank": 1}
    if s is None and (t := transpose_spec(node)) is not None:
        s, extra = t[0], {"transpose": True, "output_padding": t[1]}
    if s is None:
        return None
    return ConvSignature(
        s.in_channels, s.out_channels, s.kernel, s.stride, s.pads, s.groups, s.in_hw, s.dilation,
        **extra,
    )  # fmt: skip


def shares(graph, groups: list[Group]) -> dict[int, list[Share]]:
    """Each group's conv shares, by group id (module docstring)."""
    sigs = {name_of(n): s for n in graph.nodes if (s := _signature(n))}
    counts: dict[tuple[int, str], list[int]] = {}  # (group, conv) -> [outs, ins, tied]
    touching: dict[str, set[int]] = {}
    for g in groups:
        roles = [(n, 0) for n, _ in g.producers] + [(n, 1) for n, _ in g.consumers]
        roles += [(n, 2) for n in g.ties]
        for name, role in roles:
            if name in sigs:
                counts.setdefault((g.id, name), [0, 0, 0])[role] += 1
                touching.setdefault(name, set()).add(g.id)
    out: dict[int, list[Share]] = {}
    for (gid, name), (outs, ins, tied) in sorted(counts.items()):
        share = Share(name, sigs[name], outs, ins, bool(tied), 1.0 / len(touching[name]))
        out.setdefault(gid, []).append(share)
    return out


def volumes(graph, groups: list[Group]) -> dict[int, float]:
    """Each group's tensor volume by id: channels x H x W summed over its member tensors
    (channels x features per channel for a flattened one); 0 where a shape is unknown."""
    tensors = graph.tensors()
    out: dict[int, float] = {}
    for g in groups:
        total = 0.0
        for m in g.members:
            shape = static_shape(tensors[m.tensor]) if m.tensor in tensors else None
            if shape is not None:
                spatial = math.prod(shape[2:]) if len(shape) > 2 else m.unit
                total += (m.end - m.start) * spatial
        out[g.id] = total
    return out


class Predictor:
    """Predicts a plan's covered latency by the product rule (module docstring).

    `factors[key]`: for the candidate `key` (a group at a width), {conv: the fraction of the
    conv's full time left with only that group narrowed}; `full[conv]`: the conv's time at
    full width (ms, on the same scale as the knapsack's option latencies); `unchanged`: the
    shares' total with every group at full width.
    """

    def __init__(
        self, factors: dict, full: dict[str, float], unchanged: float, held: dict | None = None
    ) -> None:
        self.factors, self.full, self.unchanged = factors, full, unchanged
        self.held = held or {}

    def __call__(self, keys) -> float:
        """The covered latency (ms) of the plan that takes candidates `keys` (one per group:
        what each holds of the remainder is added, `held`)."""
        left: dict[str, float] = {}
        for key in keys:
            for conv, f in self.factors.get(key, {}).items():
                left[conv] = left.get(conv, 1.0) * f
        saved = sum(self.full[c] * (1.0 - f) for c, f in left.items())
        return self.unchanged - saved + sum(self.held.get(k, 0.0) for k in keys)

    def solve(
        self,
        knapsack: Callable[[float], KnapsackSolution],
        budget_ms: float,
        floor_ms: float,
        top_ms: float,
    ) -> tuple[KnapsackSolution, float]:
        """(the knapsack's solution, its knapsack budget): the most important plan whose
        prediction fits `budget_ms`, over knapsack budgets from `floor_ms` (the fastest plan's)
        to `top_ms` (every group at full width). Raises InfeasibleBudget when not even the
        fastest plan's prediction fits."""
        fits = budget_ms * (1 + 1e-9)  # a plan predicted at the budget itself fits
        lo = max(budget_ms, floor_ms)
        best = (knapsack(lo), lo)
        if self(best[0].keys) > fits:
            raise InfeasibleBudget(budget_ms, self(best[0].keys), 1)
        hi = max(top_ms, lo)
        for _ in range(BISECTIONS):
            if hi - lo <= 1e-4 * hi:
                break
            mid = (lo + hi) / 2
            sol = knapsack(mid)
            if self(sol.keys) <= fits:
                lo, best = mid, (sol, mid)
            else:
                hi = mid
        return best


def predictor(
    group_shares: dict[int, list[Share]],
    candidates: list,
    ms: dict[ConvSignature, float],
    scale: float,
    held: dict | None = None,
) -> Predictor:
    """The Predictor of `candidates` (WidthCandidate: group, removed channels) from the
    in-network conv times `ms` (LatencyTable.measure_all), `scale`d as the option latencies
    were (problem.build_problem), and the remainder each candidate `held` (ms)."""
    factors: dict = {}
    full: dict[str, float] = {}
    for c in candidates:
        for s in group_shares.get(c.group, ()):
            t = ms.get(s.sig, 0.0)
            full[s.conv] = t * scale
            if t > 0 and not c.unchanged:
                factors.setdefault(c, {})[s.conv] = ms.get(s.at(c.removed), t) / t
    groups = {c.group for c in candidates}
    unchanged = sum(s.weight * full[s.conv] for g in groups for s in group_shares.get(g, ()))
    return Predictor(factors, full, unchanged, held)
