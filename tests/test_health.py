"""The watch-health monitor: a LIST showing a change the watch never delivered is a dead watch."""

from lemzha_operator.health import WatchMonitor


def test_a_delivered_change_is_never_stale():
    monitor = WatchMonitor(stale_after=10)
    monitor.delivered("a", "5")
    assert monitor.check([("a", "5")], now=0) == []
    assert monitor.check([("a", "5")], now=100) == []


def test_an_undelivered_change_becomes_stale_after_the_grace_period():
    monitor = WatchMonitor(stale_after=10)
    monitor.delivered("a", "5")
    assert monitor.check([("a", "6"), ("b", "7")], now=0) == []  # lag starts now
    assert monitor.check([("a", "6"), ("b", "7")], now=9.9) == []
    assert monitor.check([("a", "6"), ("b", "7")], now=10) == ["a", "b"]
    monitor.delivered("a", "6")  # the watch catches up on one
    assert monitor.check([("a", "6"), ("b", "7")], now=11) == ["b"]


def test_a_watch_that_moved_on_past_the_list_is_not_stale():
    monitor = WatchMonitor(stale_after=10)
    assert monitor.check([("a", "6")], now=0) == []
    monitor.delivered("a", "8")  # versions are opaque: only equality counts, and a newer one clears the lag
    assert monitor.check([("a", "8")], now=20) == []


def test_a_new_listed_version_restarts_the_clock_and_deletions_are_forgotten():
    monitor = WatchMonitor(stale_after=10)
    assert monitor.check([("a", "1")], now=0) == []
    assert monitor.check([("a", "2")], now=8) == []  # another version: its own lag, from 8
    assert monitor.check([("a", "2")], now=17) == []
    assert monitor.check([("a", "2")], now=18) == ["a"]
    monitor.delivered("a", "2", deleted=True)
    assert monitor.check([], now=30) == []


def test_a_live_higher_priority_peer_outranks_us():
    from datetime import UTC, datetime, timedelta

    from lemzha_operator.health import outranked

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    fresh = (now - timedelta(seconds=10)).isoformat()
    stale = (now - timedelta(seconds=120)).isoformat()
    me = {"priority": 50, "lastseen": fresh, "lifetime": 60}
    assert outranked({"me": me}, 50, now) is False  # our own entry
    assert outranked({"me": me, "other": {"priority": 10, "lastseen": fresh, "lifetime": 60}}, 50, now) is False
    assert outranked({"me": me, "other": {"priority": 90, "lastseen": fresh, "lifetime": 60}}, 50, now) is True
    assert outranked({"me": me, "other": {"priority": 90, "lastseen": stale, "lifetime": 60}}, 50, now) is False
    assert outranked({}, 50, now) is False and outranked(None, 50, now) is False
