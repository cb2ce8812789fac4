"""Signals, calibration and the evidence ranker on small synthetic scenarios (fast, no data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from lemzha.calibration import Calibration, fit_calibration
from lemzha.explain import summary
from lemzha.rankers import EvidenceConfig, EvidenceRanker, SimpleRCA, assess_table, simplerca_alerts
from lemzha.scenario import Label, Scenario
from lemzha.signals import SignalTable, signal_names, signal_table
from offline.data.renaming import neutral_names

START = datetime(2023, 1, 29, 8, 0, 0, tzinfo=UTC)
METRICS = ("cpu_millicores", "memory_bytes", "latency_server_p95")
SERVICES = ("api", "cart", "db", "web")
N_BINS = 60
ONSET = 40


def scenario(*, cpu: dict[str, float] | None = None, logs: pd.DataFrame | None = None,
             edges: pd.DataFrame | None = None, onset: int | None = ONSET, seed: int = 0, root: str = "db") -> Scenario:
    """One pod per service, noisy flat metrics; `cpu` multiplies a service's CPU from the onset on."""
    rng = np.random.default_rng(seed)
    pods = tuple(f"{s}-5dc8d4f9fd-46997" for s in SERVICES)
    values = np.array([50.0, 4e8, 0.02]) * (1 + 0.05 * rng.standard_normal((N_BINS, len(pods), len(METRICS))))
    for service, factor in (cpu or {}).items():
        values[ONSET:, SERVICES.index(service), 0] *= factor
    label = Label(root, (f"{root}-5dc8d4f9fd-46997",), "cpu_contention", START + timedelta(seconds=30 * ONSET), ONSET)
    return Scenario(id="t/1", app="test", namespace="ns", start=START, pods=pods,
                    pod_service={p: p.split("-")[0] for p in pods}, metrics=METRICS, values=values.astype(np.float32),
                    logs=logs, onset=None if onset is None else START + timedelta(seconds=30 * onset), label=label,
                    edges=edges)


def logs_where(quiet: str | None = None, errors: str | None = None, seed: int = 1) -> pd.DataFrame:
    """Each service logs two events per bin (Poisson counts); from the onset `quiet`'s second event stops and
    `errors` writes error lines."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in SERVICES:
        for b in range(N_BINS):
            rows.append((s, b, f"<time> info {s}.controller#12 request start", int(rng.poisson(20)) + 1, "INFO"))
            if not (s == quiet and b >= ONSET):
                rows.append((s, b, f"<time> info {s}.service#40 request done", int(rng.poisson(20)) + 1, "INFO"))
            if s == errors and b >= ONSET:
                rows.append((s, b, f"<time> error {s}.service#77 query failed", 8, "ERROR"))
    return pd.DataFrame(rows, columns=["service", "bin", "template", "count", "level"])


def value(table: SignalTable, service: str, signal: str) -> float:
    return float(table.values[table.services.index(service), table.signals.index(signal)])


def test_table_has_every_signal_for_every_service_and_no_label_is_read() -> None:
    s = scenario(cpu={"db": 5.0}, logs=logs_where())
    table = signal_table(s, ONSET)
    assert table.signals == signal_names() and table.services == s.services
    assert (table.values >= 0).all() and np.isfinite(table.values).all()
    assert np.array_equal(table.values, signal_table(s.without_label(), ONSET).values)


def test_a_cpu_jump_is_a_cpu_signal_on_its_service_only() -> None:
    table = signal_table(scenario(cpu={"db": 5.0}), ONSET)
    assert value(table, "db", "cpu") > 20
    assert all(value(table, s, "cpu") < 5 for s in SERVICES if s != "db")
    assert table.detail[("db", "cpu")]["metric"] == "cpu_millicores"


def test_a_log_event_that_goes_quiet_is_vanished_and_errors_are_errors() -> None:
    table = signal_table(scenario(logs=logs_where(quiet="cart", errors="web")), ONSET)
    vanished = {s: value(table, s, "log_vanished") for s in SERVICES}
    assert max(vanished, key=vanished.get) == "cart" and vanished["cart"] > 4
    assert table.detail[("cart", "log_vanished")]["event"] == "<time> info cart.service#40"
    errors = {s: value(table, s, "log_errors") for s in SERVICES}
    assert max(errors, key=errors.get) == "web" and all(errors[s] == 0 for s in SERVICES if s != "web")


def test_logs_outside_covered_bins_are_missing_not_silence() -> None:
    logs = logs_where()
    gappy = logs.loc[(logs["bin"] < 30) | (logs["bin"] >= ONSET)]  # nothing at all in 30..39: a collector gap
    table = signal_table(scenario(logs=gappy), ONSET)
    assert all(value(table, s, "log_volume_drop") < 3 for s in SERVICES)


def _edges(gap_into: str, client: str = "web") -> pd.DataFrame:
    rows = []
    for b in range(N_BINS):
        for server in ("api", "db"):
            server_ms = 10.0
            gap = 2000.0 if (server == gap_into and b >= ONSET) else 2.0
            rows.append({"bin": b, "client": client if server == "api" else "api", "server": server, "covered": True,
                         "edge_requests": 10.0, "duration_sum_ms": 10 * server_ms,
                         "client_duration_sum_ms": 10 * (server_ms + gap),
                         **{c: 10.0 for c in _bucket_columns()}})
    return pd.DataFrame(rows)


def _bucket_columns() -> tuple[str, ...]:
    from lemzha.catalog import BUCKET_COLUMNS

    return BUCKET_COLUMNS


def test_a_delay_into_a_service_is_its_call_gap_unless_its_caller_is_starved() -> None:
    table = signal_table(scenario(edges=_edges("db")), ONSET)
    assert value(table, "db", "call_gap") > 5 and value(table, "api", "call_gap") == 0
    assert table.detail[("db", "call_gap")]["client"] == "api"
    # the caller of db (api) burns CPU: its outgoing calls are slow to finish, which says nothing about db
    starved = signal_table(scenario(edges=_edges("db"), cpu={"api": 5.0}), ONSET)
    assert value(starved, "db", "call_gap") == 0


def _calibrated(seeds=range(8)) -> Calibration:
    return fit_calibration(signal_table(scenario(seed=k, logs=logs_where(seed=k)), ONSET) for k in seeds)


def test_calibration_is_monotone_roundtrips_and_refuses_bad_levels() -> None:
    calibration = _calibrated()
    table = signal_table(scenario(cpu={"db": 3.0}, logs=logs_where()), ONSET)
    evidence = calibration.evidence(table, ("cpu",))[:, 0]
    order = np.argsort(table.column("cpu"))
    assert (np.diff(evidence[order]) >= -1e-12).all()
    assert evidence[table.services.index("db")] == evidence.max() > 1
    again = Calibration.from_json(calibration.to_json())
    assert np.allclose(again.evidence(table, ("cpu",)), calibration.evidence(table, ("cpu",)), atol=1e-4)
    bad = calibration.to_json()
    bad["signals"]["cpu"]["levels"] = [3.0, 1.0]
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration.from_json(bad)


def test_evidence_ranker_puts_dominant_evidence_first_and_explains_it() -> None:
    ranker = EvidenceRanker(EvidenceConfig(), _calibrated())
    s = scenario(cpu={"db": 10.0}, logs=logs_where()).without_label()
    assessment = ranker.assess(s)
    assert assessment.ranking.services[0] == "db"
    assert [a[0] for a in assessment.alerts("db")] == ["cpu"]
    assert "cpu_millicores of pod db-5dc8d4f9fd-46997" in summary(assessment, "db")
    assert summary(assessment, "web") == "no alert"


def test_a_callers_error_echo_is_discounted_when_its_callee_alerts() -> None:
    calibration = _calibrated()
    s = scenario(logs=logs_where(quiet="db", errors="api"), edges=_edges("none")).without_label()
    table = signal_table(s, ONSET)
    config = EvidenceConfig(("log_errors", "log_vanished"), 0.5)
    plain = assess_table(SignalTable(table.services, table.signals, table.values, table.detail), calibration, config)
    echoed = assess_table(table, calibration, config)  # api calls db, and db's event went quiet
    assert plain.evidence[SERVICES.index("api"), 0] == pytest.approx(2 * echoed.evidence[SERVICES.index("api"), 0])


def test_renaming_every_service_changes_no_score() -> None:
    ranker = EvidenceRanker(EvidenceConfig(), _calibrated())
    s = scenario(cpu={"db": 4.0}, logs=logs_where(quiet="cart"), edges=_edges("db"))
    renamed = neutral_names(s)
    names = dict(zip(s.services, (renamed.pod_service[p] for p in renamed.pods), strict=True))
    original, other = ranker.rank(s.without_label()), ranker.rank(renamed.without_label())
    assert {names[x]: v for x, v in zip(original.services, original.scores, strict=True)} == dict(
        zip(other.services, other.scores, strict=True))


def test_without_an_onset_the_ranker_finds_one_near_the_fault() -> None:
    ranker = EvidenceRanker(EvidenceConfig(), _calibrated())
    s = scenario(cpu={"db": 10.0}, logs=logs_where(), onset=None).without_label()
    assert ranker.rank(s).services[0] == "db"


def test_config_and_ranker_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one signal"):
        EvidenceConfig(())
    with pytest.raises(ValueError, match="threshold"):
        EvidenceConfig(threshold=float("nan"))
    with pytest.raises(RuntimeError, match="calibration"):
        EvidenceRanker().rank(scenario().without_label())


def test_simplerca_counts_alerts_per_service() -> None:
    s = scenario(cpu={"db": 10.0}, logs=logs_where(errors="db")).without_label()
    alerts = simplerca_alerts(s, ONSET)
    assert set(alerts["db"]) >= {"metric:cpu_millicores", "log_errors"}
    ranking = SimpleRCA().rank(s)
    assert ranking.services[0] == "db" and ranking.scores[0] >= 2


def test_the_robust_deviation_of_some_bins_equals_those_bins_of_the_whole() -> None:
    from lemzha.evidence import nan_quantiles, robust_deviation

    rng = np.random.default_rng(3)
    values = rng.lognormal(0, 1, (40, 7, 3))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[:, 2, 1] = np.nan  # a series without any sample
    for spread in ("mad", "iqr"):
        whole = robust_deviation(values, 30, spread=spread)
        np.testing.assert_array_equal(robust_deviation(values, 30, spread=spread, rows=slice(30, 38)), whole[30:38])
    original, scratch = values.copy(), values.copy()
    for got, want in zip(nan_quantiles(scratch, (0.25, 0.5), in_place=True), nan_quantiles(values, (0.25, 0.5)),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(values, original)  # a copy is sorted unless in_place
    np.testing.assert_array_equal(scratch, np.sort(original, axis=0))
