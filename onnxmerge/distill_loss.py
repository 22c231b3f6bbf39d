"""Distillation losses and the held-out score (onnxmerge.distill).

Summed over graph outputs, with s the student's and t the teacher's output on the same view:

- classifier-like outputs (N x K, K >= 2): T^2 KL(softmax(t / T) || softmax(s / T)) (Hinton
  et al. 2015: T^2 keeps gradients comparable across temperatures); an output that already
  is a probability vector (rows in [0, 1] summing to 1) is its own softmax, at T = 1;
- any other output: per channel c (axis 1), mean((s_c - t_c)^2) / E_c, averaged over
  channels, E_c the teacher's mean energy of channel c on the held-out views, fixed for the
  run (floored at 1e-6 of the quietest live channel): the per-channel measure of
  importance.output_distortion, so a head of small numbers (a detector's class scores next to
  its boxes) counts as much as a large one.

The held-out Score is importance's distortion (what the solvers minimise) and the top-1
agreement of classifier outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxmerge.importance import _distortion, log_probabilities
from onnxmerge.torch_graph import _torch


@dataclass
class Score:
    """Held-out fidelity to the teacher: `distortion` as importance measures it (0 = equal),
    `top1` the mean top-1 agreement over classifier-like outputs (None without any)."""

    distortion: float
    top1: float | None

    def __str__(self) -> str:
        top1 = "" if self.top1 is None else f", top-1 agreement {self.top1:.3f}"
        return f"distortion {self.distortion:.4g}{top1}"


def is_classifier(t: np.ndarray) -> bool:
    """Classifier-like: N x K with K >= 2 (scored by KL, as importance does)."""
    return t.ndim == 2 and t.shape[1] >= 2


def channel_energy(outputs: list[np.ndarray]) -> list[np.ndarray | None]:
    """Per output: the teacher's mean squared value per channel (None for classifiers)."""
    scales = []
    for t in outputs:
        if is_classifier(t):
            scales.append(None)
            continue
        r = t.reshape(t.shape[0], t.shape[1], -1) if t.ndim >= 2 else t.reshape(1, 1, -1)
        energy = np.mean(np.asarray(r, np.float64) ** 2, axis=(0, 2))
        live = energy[energy > 0]
        scales.append(np.maximum(energy, 1e-6 * (live.min() if live.size else 1.0)))
    return scales


def distill_loss(s: Any, t: Any, scale: np.ndarray | None, temperature: float) -> Any:
    """The loss of one output: student `s` against teacher `t` (torch tensors, batch first);
    `scale` from channel_energy (None: a classifier). See the module docstring."""
    torch = _torch()
    if scale is None:  # classifier-like
        if (
            t.min() >= 0
            and t.max() <= 1
            and torch.allclose(t.sum(1), torch.ones_like(t[:, 0]), atol=1e-3)
        ):
            lt, ls = torch.log(t.clamp_min(1e-12)), torch.log(s.clamp_min(1e-12))
        else:
            lt = torch.log_softmax(t / temperature, 1)
            ls = torch.log_softmax(s / temperature, 1)
        return temperature**2 * (lt.exp() * (lt - ls)).sum(1).mean()
    d = (s - t).reshape(s.shape[0], s.shape[1], -1) if s.ndim >= 2 else (s - t).reshape(1, 1, -1)
    per = d.pow(2).mean(dim=(0, 2)) / torch.as_tensor(scale, dtype=d.dtype, device=d.device)
    return per.mean()


def score(ref: list[np.ndarray], out: list[np.ndarray]) -> Score:
    """Score of outputs `out` against the teacher's `ref` (per output, batch first)."""
    n = len(ref[0])
    per_ref = [[r[i : i + 1] for r in ref] for i in range(n)]
    per_out = [[o[i : i + 1] for o in out] for i in range(n)]
    top1 = [
        float(np.mean(log_probabilities(r).argmax(1) == log_probabilities(o).argmax(1)))
        for r, o in zip(ref, out, strict=True)
        if is_classifier(r)
    ]
    return Score(_distortion(per_ref, per_out), float(np.mean(top1)) if top1 else None)
