"""Mean replacement: what a consumer lost with its pruned inputs goes into its bias.

When width pruning removes input features R of a linear consumer (a dense Conv, or a Gemm or
a MatMul + Add after a Flatten), the consumer's output loses W_R x_R. Replacing each removed
feature by its mean over calibration data (Evci et al. 2018, "Mean Replacement Pruning"; the
same first-order correction as Nagel et al. 2019's bias correction, ICCV) keeps the output's
expectation:

    y = W_K x_K + W_R x_R + b  ~=  W_K x_K + (b + W_R mu_R),   mu_R = E[x_R]

where for a Conv W_R sums the removed input channels' weights over the kernel taps (exact away
from zero padding, where x_R is 0 rather than mu_R); for a ConvTranspose (a UNet's or a
GAN's upsampling) it is that sum over the product of the strides, since a constant input
reaches each output position through the taps of its phase (position mod stride) only, and
the phases' tap sums average to sum / prod(strides): exact in the mean over a period of output
positions, not per position (a per-channel bias cannot follow the phase); for a Gemm it
carries alpha / beta, and a MatMul's bias is the constant of the Add after it (tf2onnx's form
of a dense layer).
This needs no more data than a mean per feature, so it also serves consumers the least-squares
refit cannot fit (a Gemm head sees one sample per image; calibration.fit.why_not), and for
the ones it refits it is a better prior (the ridge pulls toward the compensated bias).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx


@dataclass(frozen=True)
class Lost:
    """Input features a consumer lost: `removed` indices along axis 1 of the ORIGINAL
    network's tensor `tensor`, and `weight` (outputs kept, len(removed)): what each removed
    feature added to each output per unit of its value (summed over taps, scaled for a Gemm)."""

    tensor: str
    removed: np.ndarray
    weight: np.ndarray

    def shift(self, x: np.ndarray) -> np.ndarray:
        """The bias shift W_R mu_R (outputs,) for original tensor values x (N, C, ...)."""
        x = np.asarray(x, np.float64)
        axes = tuple(a for a in range(x.ndim) if a != 1)
        mu = x[:, self.removed].mean(axis=axes)
        return np.asarray(self.weight, np.float64) @ mu


def compensate(
    model: onnx.ModelProto, lost: Mapping[str, Lost], tensors: Mapping[str, np.ndarray]
) -> list[str]:
    """Add each named node's shift (`Lost.shift` of `tensors[lost.tensor]`) to its bias, in place.

    The bias is a Conv's B or a Gemm's C (created if missing), or the constant operand of the
    Add after a MatMul. It is written as a new initializer (a fresh name: a shared one never
    changes); the old one goes if nothing else reads it. Nodes whose bias is computed, not
    an initializer, are left alone. Returns the names of the nodes changed.
    """
    inits = {t.name: t for t in model.graph.initializer}
    taken = set(inits) | {n.name for n in model.graph.node}
    taken |= {o for n in model.graph.node for o in n.output}
    done, replaced = [], set()
    for node in model.graph.node:
        item = lost.get(node.name)
        slot = _bias_slot(node, inits) if item is not None else None
        if slot is None:
            continue
        has_bias = len(node.input) > slot and bool(node.input[slot])
        if has_bias:
            replaced.add(node.input[slot])
            old = np.asarray(onnx.numpy_helper.to_array(inits[node.input[slot]]), np.float64)
        else:
            old = np.zeros(1)
        typed = inits[node.input[slot] if has_bias else node.input[1]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(typed.data_type)
        name, i = f"{node.name}_compensated", 0
        while name in taken:
            i += 1
            name = f"{node.name}_compensated_{i}"
        taken.add(name)
        value = (old + item.shift(tensors[item.tensor])).astype(dtype)
        model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name
        done.append(node.name)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for name in replaced - used:  # an old bias nothing reads any more
        model.graph.initializer.remove(inits[name])
    return done


def _bias_slot(node: onnx.NodeProto, inits: Mapping) -> int | None:
    """The input index of `node`'s bias: 2 for a Conv, ConvTranspose or Gemm with a constant
    weight and no computed bias, the constant operand of an Add; None when there is none."""
    linear = node.op_type in ("Conv", "ConvTranspose", "Gemm")
    if linear and len(node.input) > 1 and node.input[1] in inits:
        has_bias = len(node.input) > 2 and bool(node.input[2])
        return 2 if not has_bias or node.input[2] in inits else None
    if node.op_type == "Add":
        constant = [i for i, name in enumerate(node.input) if name in inits]
        return constant[0] if len(constant) == 1 else None
    return None
