"""The ``ocistore`` command (:func:`run`); :mod:`ocistore.cli.main` parses and dispatches."""

from .main import run

__all__ = ["run"]
