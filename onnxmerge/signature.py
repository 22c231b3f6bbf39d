"""ConvSignature: everything that decides the latency of one (merged) conv.

The latency table times the one-conv model a signature describes: an input of shape
(batch, in_channels, *in_hw), the Conv, an optional residual Add of an output-shaped tensor,
and the activation the conv carries in the network. Batch and dtype belong to the timing
context (the backend), not to the signature.

A 1-D conv (`rank` 1: audio and sequence CNNs) is written as the 2-D conv it equals with a
height of 1 (kernel 1 x k, stride 1 x s, no padding above or below, in_hw (1, L)), so the
channel arithmetic is shared; the table times the real 1-D op (runtimes run the two through
different kernels: ONNX Runtime's NCHWc layout takes only 2-D convs).

A ConvTranspose (`transpose`: a UNet's or a GAN's upsampling) keeps Conv's meaning of the
fields: in_channels is its input's, out_channels its output's (weight C_in x C_out/groups x
k x k), in_hw its input's size; `output_padding` adds to its output size (geometry).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxmerge.activations import TIMED as ACTIVATIONS
from onnxmerge.geometry import out_hw, transpose_out_hw


@dataclass(frozen=True)
class ConvSignature:
    """One conv (with its activation and residual Add) as the latency table keys it."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    groups: int
    in_hw: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    activation: str | None = None
    residual: bool = False
    rank: int = 2  # 1: a 1-D conv, in its height-1 form (module docstring)
    transpose: bool = False  # a ConvTranspose (module docstring)
    output_padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation kind {self.activation!r}")
        if self.rank not in (1, 2):
            raise ValueError(f"rank must be 1 or 2, got {self.rank}")
        flat = (self.kernel[0], self.stride[0], self.dilation[0], self.in_hw[0]) == (1, 1, 1, 1)
        if self.rank == 1 and not (flat and self.pads[0] == self.pads[2] == 0):
            raise ValueError(f"a 1-D signature has height 1 and no vertical padding: {self}")

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (H, W)."""
        if self.transpose:
            return transpose_out_hw(
                self.in_hw, self.kernel, self.stride, self.dilation, self.pads, self.output_padding
            )
        return out_hw(self.in_hw, self.kernel, self.stride, self.dilation, self.pads)

    def key(self) -> str:
        """A stable text key (used in caches and reports)."""
        k, s, d, p, hw = self.kernel, self.stride, self.dilation, self.pads, self.in_hw
        return (
            f"c{self.in_channels}-{self.out_channels}_k{k[0]}x{k[1]}_s{s[0]}x{s[1]}"
            f"_d{d[0]}x{d[1]}_p{'.'.join(map(str, p))}_g{self.groups}_hw{hw[0]}x{hw[1]}"
            f"_a{self.activation or 'none'}_r{int(self.residual)}"
            + ("_1d" if self.rank == 1 else "")
            + (f"_T{self.output_padding[0]}x{self.output_padding[1]}" if self.transpose else "")
        )
