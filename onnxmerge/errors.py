"""The one exception type for errors a user can cause (bad file, impossible target, ...).

The CLI turns it into one line on stderr and exit code 2. Anything else is a bug in onnxmerge.
"""


class OnnxMergeError(Exception):
    """A user-facing error: the message is one line that says what is wrong and how to fix it."""


class NothingToRemove(OnnxMergeError):
    """The model offers one kind of compression nothing to remove: no mergeable conv chain
    (`kind` "depth") or no prunable channel group ("width"). `--prune both` then runs the
    other kind alone."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class OutOfReach(OnnxMergeError):
    """The target is out of reach: even the fastest plan measured `fastest` (a speedup) on the
    backend. `--prune both` then asks its width stage for more."""

    def __init__(self, fastest: float, message: str) -> None:
        super().__init__(message)
        self.fastest = fastest
