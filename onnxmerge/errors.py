"""The one exception type for errors a user can cause (bad file, impossible target, ...).

The CLI turns it into one line on stderr and exit code 2. Anything else is a bug in onnxmerge.
"""


class OnnxMergeError(Exception):
    """A user-facing error: the message is one line that says what is wrong and how to fix it."""
