"""`python -m onnxmerge.cli ...` runs the command line."""

import sys

from onnxmerge.cli import main

sys.exit(main())
