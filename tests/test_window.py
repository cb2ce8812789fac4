from datetime import UTC, datetime, timedelta

import pytest

from lemzha_operator.window import InvalidSpec, resolve_window, seconds_until_complete

NOW = datetime(2023, 1, 29, 12, 0, 0, tzinfo=UTC)


def test_fault_time_form_gives_aligned_bins_and_the_onset():
    w = resolve_window({"faultTime": "2023-01-29T09:04:07Z", "before": "10m", "after": "10m"}, NOW)
    assert w.onset == datetime(2023, 1, 29, 9, 4, 7, tzinfo=UTC)
    assert w.start == datetime(2023, 1, 29, 8, 54, 0, tzinfo=UTC)
    assert w.end == datetime(2023, 1, 29, 9, 14, 0, tzinfo=UTC) and w.start.timestamp() % 30 == 0
    assert w.n_bins == 40  # [floor(first), floor(last)): the offline convention


def test_defaults_and_from_to_and_recent():
    assert resolve_window({"faultTime": "2023-01-29T09:00:00Z"}, NOW).n_bins == 140  # 60 min before, 10 after
    w = resolve_window({"from": "2023-01-29T09:00:00Z", "to": "2023-01-29T09:20:00Z"}, NOW)
    assert (w.start, w.n_bins, w.onset) == (datetime(2023, 1, 29, 9, tzinfo=UTC), 40, None)
    w = resolve_window({"recent": "15m"}, NOW)
    assert w.end == NOW and w.n_bins == 30 and w.onset is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "exactly one window form"),
        ({"recent": "10m", "faultTime": "2023-01-29T09:00:00Z"}, "exactly one"),
        ({"faultTime": "yesterday"}, "RFC3339"),
        ({"from": "2023-01-29T09:20:00Z", "to": "2023-01-29T09:00:00Z"}, "after spec.from"),
        ({"from": "2023-01-29T09:00:00Z"}, "go together"),
        ({"recent": "1m"}, "outside"),
        ({"recent": "3h"}, "outside"),
        ({"recent": "10 minutes"}, "duration"),
        ({"from": "2023-01-29T13:30:00Z", "to": "2023-01-29T13:40:00Z"}, "future"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(InvalidSpec, match=message):
        resolve_window(spec, NOW)


def test_waiting_for_a_window_that_has_not_ended():
    w = resolve_window({"from": "2023-01-29T11:50:00Z", "to": "2023-01-29T12:10:00Z"}, NOW)
    assert seconds_until_complete(w, NOW) == pytest.approx(11 * 60)
    assert seconds_until_complete(w, NOW + timedelta(hours=1)) == 0


@pytest.mark.parametrize("fault", ["0001-01-01T00:05:00Z", "9999-12-31T23:55:00Z"])
def test_a_fault_time_at_the_ends_of_the_calendar_is_an_invalid_spec(fault):
    # `onset - before` leaves what a datetime holds: that must be InvalidSpec, not an OverflowError
    with pytest.raises(InvalidSpec, match="years 1 to 9999"):
        resolve_window({"faultTime": fault, "timeoutSeconds": 30}, NOW)


@pytest.mark.parametrize(("before", "after", "field"), [("2m", "0s", "after"), ("0s", "10m", "before"),
                                                        ("10m", "59s", "after")])
def test_a_fault_time_window_must_hold_the_onset_with_time_on_both_sides(before, after, field):
    with pytest.raises(InvalidSpec, match=f"spec.{field}: .* is under 1m"):
        resolve_window({"faultTime": "2023-01-29T09:00:00Z", "before": before, "after": after}, NOW)
    edge = resolve_window({"faultTime": "2023-01-29T09:00:00Z", "before": "1m", "after": "1m"}, NOW)
    assert edge.start < edge.onset < edge.end


def test_a_duration_too_long_for_a_timedelta_is_an_invalid_spec():
    with pytest.raises(InvalidSpec, match=r"spec\.before: .* too long"):
        resolve_window({"faultTime": "2023-01-29T09:00:00Z", "before": "9" * 20 + "h"}, NOW)


def test_status_times_are_rfc3339_with_z_whatever_offset_the_spec_used():
    w = resolve_window({"faultTime": "2023-01-29T10:34:07+01:30", "before": "10m", "after": "10m"}, NOW)
    assert w.onset == datetime(2023, 1, 29, 9, 4, 7, tzinfo=UTC)
    assert w.to_status() == {"from": "2023-01-29T08:54:00Z", "to": "2023-01-29T09:14:00Z",
                             "onset": "2023-01-29T09:04:07Z"}
