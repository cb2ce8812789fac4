"""Step the watches' clock file (lemzha_operator.clock, LEMZHA_CLOCK_FILE) in tests."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from lemzha.binning import rfc3339


def set_clock(path: Path, moment: datetime) -> None:
    """Write `moment` into a clock file atomically: the operator never reads half a time."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(rfc3339(moment, fraction=True))
    os.replace(tmp, path)
