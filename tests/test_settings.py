"""Operator settings: every knob from the environment, bad values named, the backoff and the peering priority."""

import pytest

from lemzha_operator.settings import Settings, peering_priority, watched_namespaces

BASE = {"LEMZHA_PROMETHEUS_URL": "http://p:9090"}


def test_defaults_and_overrides():
    default = Settings.from_env(BASE)
    assert (default.concurrency, default.metrics_port, default.query_timeout) == (2, 8000, 30.0)
    assert default.loki_max_lines == 200_000 and default.watch_stale_seconds == 120.0
    tuned = Settings.from_env({**BASE, "LEMZHA_CONCURRENCY": "8", "LEMZHA_QUERY_TIMEOUT_SECONDS": "2.5",
                               "LEMZHA_LOKI_MAX_LINES": "1000", "LEMZHA_METRICS_PORT": "0"})
    assert (tuned.concurrency, tuned.query_timeout, tuned.loki_max_lines, tuned.metrics_port) == (8, 2.5, 1000, 0)


def test_loop_periods_default_and_override():
    """The RCAWatch loop's tick and the TTL janitor's period are settings like the others (read at startup)."""
    default = Settings.from_env(BASE)
    assert (default.watch_tick_seconds, default.ttl_check_seconds) == (10.0, 30.0)
    tuned = Settings.from_env({**BASE, "LEMZHA_WATCH_TICK_SECONDS": "0.2", "LEMZHA_TTL_CHECK_SECONDS": "1"})
    assert (tuned.watch_tick_seconds, tuned.ttl_check_seconds) == (0.2, 1.0)
    assert Settings.from_env({**BASE, "LEMZHA_TTL_CHECK_SECONDS": ""}).ttl_check_seconds == 30.0  # empty: default


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LEMZHA_CONCURRENCY", "0", "must be at least 1"),
    ("LEMZHA_CONCURRENCY", "two", "not a valid int"),
    ("LEMZHA_QUERY_TIMEOUT_SECONDS", "-1", "must be at least"),
    ("LEMZHA_LOKI_MAX_LINES", "1e3", "not a valid int"),
    ("LEMZHA_METRICS_PORT", "-5", "must be at least 0"),
    ("LEMZHA_QUERY_TIMEOUT_SECONDS", "nan", "not a finite number"),
    ("LEMZHA_TTL_CHECK_SECONDS", "inf", "not a finite number"),
    *[(name, value, message) for name in ("LEMZHA_WATCH_TICK_SECONDS", "LEMZHA_TTL_CHECK_SECONDS")
      for value, message in (("abc", "not a valid float"), ("0", "must be at least"), ("-1", "must be at least"))],
])
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ValueError, match=f"{name}=.*{message}"):
        Settings.from_env({**BASE, name: value})


def test_missing_prometheus_url_is_an_error():
    with pytest.raises(ValueError, match="LEMZHA_PROMETHEUS_URL"):
        Settings.from_env({})


def test_backoff_doubles_up_to_its_ceiling():
    s = Settings.from_env({**BASE, "LEMZHA_RETRY_BASE_SECONDS": "2", "LEMZHA_RETRY_MAX_SECONDS": "20"})
    assert [s.backoff(a) for a in range(6)] == [2, 4, 8, 16, 20, 20]
    assert s.backoff(10_000) == 20  # no overflow on a long outage


def test_peering_priorities_are_stable_and_distinct_per_pod():
    names = [f"lemzha-operator-7d9f8b6c5-{i:05d}" for i in range(200)]
    priorities = [peering_priority(n) for n in names]
    assert len(set(priorities)) == len(names) and all(p > 0 for p in priorities)
    assert peering_priority(names[0]) == priorities[0]


def test_watched_namespaces():
    assert watched_namespaces({}) == ()
    assert watched_namespaces({"LEMZHA_WATCH_NAMESPACES": " ts, hipster,,ts"}) == ("hipster", "ts")
