"""The watches' clock: real UTC time, unless LEMZHA_CLOCK_FILE names a file holding an ISO-8601 time.

A test and replay setting, not for production: tests replay a past Nezha day into Prometheus and rewrite the file
to step RCAWatch evaluations across that history instead of backfilling data near now. The file is read on every
call. Only the RCAWatch evaluations use this clock; incidents, TTLs and health checks keep real time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

ENV = "LEMZHA_CLOCK_FILE"


class ClockError(RuntimeError):
    """The clock file is set but cannot be read or parsed."""


def now(env: dict[str, str] | None = None) -> datetime:
    """The current time (timezone-aware UTC): real time, or the time in the file LEMZHA_CLOCK_FILE names."""
    path = (os.environ if env is None else env).get(ENV, "")
    if not path:
        return datetime.now(UTC)
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise ClockError(f"{ENV}={path}: cannot read the clock file ({err})") from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ClockError(f"{ENV}={path}: {text[:64]!r} is not an ISO-8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


