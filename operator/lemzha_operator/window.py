"""Resolve an RCAIncident's window from its spec, once, into absolute 30 s-aligned bins.

Three mutually exclusive forms (the CRD enforces this with CEL; the operator re-validates, because a CRD can be
installed without its rules): `faultTime` with `before`/`after`, `from`/`to`, or `recent`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from lemzha.binning import BIN_SECONDS, as_utc, rfc3339, window_bins

MIN_WINDOW = timedelta(minutes=2)
MAX_WINDOW = timedelta(hours=2)
MAX_FUTURE = timedelta(hours=1)
# A faultTime window keeps at least this much on each side of the fault: the ranker compares what came after the
# onset with what came before, so a window that ends at (or starts after) the fault cannot show the fault at all.
MIN_SIDE = timedelta(minutes=1)
DEFAULT_BEFORE = "60m"  # the hour of reference the ranker compares the fault with (offline.data --before)
DEFAULT_AFTER = "10m"
_DURATION = re.compile(r"^([0-9]+)([smh])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}


class InvalidSpec(ValueError):
    """The spec cannot describe a window: the incident fails with reason InvalidSpec."""


@dataclass(frozen=True)
class ResolvedWindow:
    start: datetime  # first bin start, aligned to 30 s
    n_bins: int
    onset: datetime | None  # the fault time the user gave; None means the model scans the window

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=BIN_SECONDS * self.n_bins)

    def to_status(self) -> dict:
        frozen = {"from": rfc3339(self.start), "to": rfc3339(self.end)}
        if self.onset is not None:
            frozen["onset"] = rfc3339(self.onset)
        return frozen


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g}m"


def parse_duration(text: str, field: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise InvalidSpec(f"spec.{field}: {text!r} is not a duration like 90s, 10m or 1h")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise InvalidSpec(f"spec.{field}: {text!r} is too long to be a duration") from None


def _time(spec: dict, field: str) -> datetime:
    try:
        return as_utc(spec[field])
    except (ValueError, TypeError) as err:
        raise InvalidSpec(f"spec.{field}: {spec[field]!r} is not an RFC3339 time ({err})") from None


def resolve_window(spec: dict, now: datetime) -> ResolvedWindow:
    """Absolute window for a spec, evaluated at `now` (only `recent` depends on it)."""
    try:
        return _resolve(spec, now)
    except OverflowError:  # a time near year 1 or 9999 moved past what a datetime holds
        given = ", ".join(f"spec.{k}={spec[k]}" for k in ("faultTime", "from", "to") if k in spec)
        raise InvalidSpec(f"the window of {given or 'this spec'} reaches past the years 1 to 9999") from None


def _resolve(spec: dict, now: datetime) -> ResolvedWindow:
    forms = [name for name, keys in (("faultTime", ("faultTime",)), ("from/to", ("from", "to")),
                                     ("recent", ("recent",))) if any(k in spec for k in keys)]
    if len(forms) != 1:
        raise InvalidSpec(f"spec needs exactly one window form (faultTime, from/to or recent), got {forms or 'none'}")
    onset = None
    if forms[0] == "faultTime":
        onset = _time(spec, "faultTime")
        before = parse_duration(spec.get("before", DEFAULT_BEFORE), "before")
        after = parse_duration(spec.get("after", DEFAULT_AFTER), "after")
        for field, side in (("before", before), ("after", after)):
            if side < MIN_SIDE:
                raise InvalidSpec(f"spec.{field}: {spec[field]!r} is under {_minutes(MIN_SIDE)}: the window must hold "
                                  "the fault's onset with time on both sides (the ranker compares after with before)")
        first, last = onset - before, onset + after
    elif forms[0] == "from/to":
        if "from" not in spec or "to" not in spec:
            raise InvalidSpec("spec.from and spec.to go together")
        first, last = _time(spec, "from"), _time(spec, "to")
        if last <= first:
            raise InvalidSpec("spec.to must be after spec.from")
    else:
        last = as_utc(now)
        first = last - parse_duration(spec["recent"], "recent")
    if not MIN_WINDOW <= last - first <= MAX_WINDOW:
        raise InvalidSpec(f"window length {last - first} is outside [{MIN_WINDOW}, {MAX_WINDOW}]")
    if last > as_utc(now) + MAX_FUTURE:
        raise InvalidSpec(f"window end {rfc3339(last)} is more than {MAX_FUTURE} in the future")
    start, n_bins = window_bins(first, last)  # the same convention as the offline scenarios
    return ResolvedWindow(start, n_bins, onset)


def seconds_until_complete(window: ResolvedWindow, now: datetime, grace: timedelta = timedelta(seconds=60)) -> float:
    """How long to wait before the window's data is in (scrape and ingestion lag included); 0 when ready."""
    return max(0.0, (window.end + grace - as_utc(now)).total_seconds())
