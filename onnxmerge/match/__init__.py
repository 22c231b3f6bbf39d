"""ONNX graph -> conv chains (match.chains) with their activation regions (match.regions)."""

from onnxmerge.match.chains import Match, MatchedChain, Slot, match

__all__ = ["Match", "MatchedChain", "Slot", "match"]
