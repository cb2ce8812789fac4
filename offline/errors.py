"""The error every offline wing raises for bad input data or paths; `offline.cli.run_cli` reports it in one line.

It lives outside the wings so that the shared CLI plumbing can name it without importing the data wing, which
itself uses that plumbing."""

from __future__ import annotations


class DataError(RuntimeError):
    """Bad input data or paths: reported as a one-line error by the CLIs."""
