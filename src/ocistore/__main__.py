"""``python -m ocistore``: the ``ocistore`` command."""

import sys

from .cli import run

sys.exit(run())
