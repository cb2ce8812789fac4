"""Shared CLI plumbing: one-line errors, non-zero exits."""

from __future__ import annotations

import sys
from collections.abc import Callable

from lemzha.scenario import ScenarioError
from offline.errors import DataError

USER_ERRORS = (DataError, ScenarioError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, KeyError)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main`; a bad input becomes one line on stderr and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
