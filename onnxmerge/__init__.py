"""onnxmerge: latency-aware depth compression for ONNX CNNs (see README.md)."""

__all__ = ["MergeConvs"]


def __getattr__(name: str):
    # Lazy, so that `import onnxmerge` does not import Polygraphy.
    if name == "MergeConvs":
        from onnxmerge.polygraphy_loader import MergeConvs

        return MergeConvs
    raise AttributeError(f"module 'onnxmerge' has no attribute {name!r}")
