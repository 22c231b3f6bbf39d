"""onnxmerge: latency-aware depth compression for ONNX CNNs (see README.md)."""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["MergeConvs", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import onnxmerge` does not import Polygraphy.
    if name == "MergeConvs":
        from onnxmerge.polygraphy_loader import MergeConvs

        return MergeConvs
    raise AttributeError(f"module 'onnxmerge' has no attribute {name!r}")
