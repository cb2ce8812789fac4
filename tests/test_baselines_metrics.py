"""Baseline rankers and evaluation metrics on small synthetic scenarios and hand-made cases (fast, no data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from lemzha.baselines import (
    Baro,
    NSigma,
    NSigmaLogShare,
    NSigmaLogShareTraces,
    ServicePrior,
    TraceP95,
    error_share_increase,
    random_ranking_metrics,
    trace_p95_scores,
)
from lemzha.detect.onset import cusum_onset
from lemzha.ranking import Ranker, Ranking
from lemzha.scenario import Label, Scenario
from offline.eval.scoring import aggregate, case_metrics, paired_bootstrap

START = datetime(2023, 1, 29, 8, 0, 0, tzinfo=UTC)
METRICS = ("cpu_millicores", "memory_bytes")
SERVICES = ("a", "b", "c", "d")


def make_scenario(
    *,
    n_bins: int = 20,
    onset_bin: int | None = 10,
    step_bin: int | None = None,
    jumps: dict[str, float] | None = None,
    logs: pd.DataFrame | None = None,
    root: str = "a",
    seed: int = 0,
    sid: str = "t/1",
) -> Scenario:
    """Two pods per service, noisy flat metrics; `jumps` adds `size` to the CPU of a service's first pod from
    `step_bin` (default: the onset) on. `onset_bin=None` leaves the onset unknown."""
    rng = np.random.default_rng(seed)
    pods = tuple(f"{s}-5dc8d4f9fd-{suffix}" for s in SERVICES for suffix in ("46997", "llznp"))
    pod_service = {p: p.split("-")[0] for p in pods}
    base = np.array([100.0, 5e8])
    values = base * (1 + 0.01 * rng.standard_normal((n_bins, len(pods), len(METRICS))))
    step = step_bin if step_bin is not None else onset_bin
    for service, size in (jumps or {}).items():
        values[step:, pods.index(f"{service}-5dc8d4f9fd-46997"), 0] += size
    onset = None if onset_bin is None else START + timedelta(seconds=30 * onset_bin + 5)
    fault_bin = onset_bin if onset_bin is not None else (step or 0)
    label = Label(root, (f"{root}-5dc8d4f9fd-46997",), "cpu_contention", START + timedelta(seconds=30 * fault_bin),
                  fault_bin)
    return Scenario(
        id=sid, app="test", namespace="ns", start=START, pods=pods, pod_service=pod_service, metrics=METRICS,
        values=values.astype(np.float32), logs=logs, onset=onset, label=label,
    )


def log_table(rows: list[tuple[str, int, int, str]]) -> pd.DataFrame:
    """rows of (service, bin, count, level)."""
    return pd.DataFrame(
        {
            "service": [r[0] for r in rows],
            "bin": [r[1] for r in rows],
            "template": [f"t{i} <num>" for i in range(len(rows))],
            "count": [r[2] for r in rows],
            "level": [r[3] for r in rows],
        }
    )


def flat_logs(n_bins: int = 20) -> list[tuple[str, int, int, str]]:
    """Every service logs 10 INFO lines per bin and 1 ERROR line every other bin: the same share throughout."""
    rows = [(s, b, 10, "INFO") for s in SERVICES for b in range(n_bins)]
    rows += [(s, b, 1, "ERROR") for s in SERVICES for b in range(0, n_bins, 2)]
    return rows


# -- metrics ---------------------------------------------------------------------------------------------------------
def test_case_metrics_by_hand():
    assert case_metrics(1, 10) == {"acc1": 1.0, "acc3": 1.0, "acc5": 1.0, "avg5": 1.0, "mrr": 1.0}
    m = case_metrics(4, 10)
    assert m["acc1"] == 0 and m["acc3"] == 0 and m["acc5"] == 1
    assert m["avg5"] == pytest.approx(2 / 5)  # hits at k = 4, 5
    assert m["mrr"] == pytest.approx(0.25)
    miss = case_metrics(11, 10)  # not ranked at all (Ranking.rank_of gives n + 1)
    assert miss == {"acc1": 0.0, "acc3": 0.0, "acc5": 0.0, "avg5": 0.0, "mrr": 0.0}
    with pytest.raises(ValueError):
        case_metrics(0, 10)


def test_aggregate_on_known_ranks():
    agg = aggregate([1, 2, 4, 7], 10)
    assert agg["acc1"]["mean"] == pytest.approx(0.25)
    assert agg["acc3"]["mean"] == pytest.approx(0.5)
    assert agg["acc5"]["mean"] == pytest.approx(0.75)
    assert agg["mrr"]["mean"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 7) / 4)
    # per-case Avg@5: rank 1 -> 5/5, rank 2 -> 4/5, rank 4 -> 2/5, rank 7 -> 0
    assert agg["avg5"]["mean"] == pytest.approx((1 + 0.8 + 0.4 + 0) / 4)
    assert agg["acc1"]["std"] == pytest.approx(np.std([1, 0, 0, 0], ddof=1))
    for key, stats in agg.items():
        assert stats["n"] == 4, key
        lo, hi = stats["ci95"]
        assert lo <= stats["mean"] <= hi, key
    single = aggregate([3], 10)
    assert single["acc3"] == {"mean": 1.0, "std": 0.0, "ci95": [1.0, 1.0], "n": 1}


def test_aggregate_per_case_service_counts():
    agg = aggregate([2, 2], [2, 1])  # the second case ranks past its single service: a miss
    assert agg["acc3"]["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        aggregate([1, 2], [3])


def test_paired_bootstrap_identical_inputs():
    a = [0.0, 1.0, 0.5, 1.0, 0.0]
    out = paired_bootstrap(a, a)
    assert out["mean_diff"] == 0.0
    assert out["ci95"] == [0.0, 0.0]
    assert out["excludes_zero"] is False
    assert out["p_le_0"] == 1.0
    assert out["n"] == 5


def test_paired_bootstrap_constant_advantage_excludes_zero():
    rng = np.random.default_rng(1)
    b = rng.random(40)
    out = paired_bootstrap(b + 0.1, b)
    assert out["mean_diff"] == pytest.approx(0.1)
    assert out["ci95"][0] > 0 and out["excludes_zero"] is True
    assert out["p_le_0"] == 0.0
    assert out["n"] == 40


def test_paired_bootstrap_ci_contains_mean_and_is_stable_across_seeds():
    rng = np.random.default_rng(2)
    a, b = rng.random(60), rng.random(60)
    first = paired_bootstrap(a, b, seed=0)
    second = paired_bootstrap(a, b, seed=1)
    for out in (first, second):
        lo, hi = out["ci95"]
        assert lo <= out["mean_diff"] <= hi
        assert 0.0 <= out["p_le_0"] <= 1.0
    width = first["ci95"][1] - first["ci95"][0]
    assert np.allclose(first["ci95"], second["ci95"], atol=0.1 * width)
    assert paired_bootstrap(a, b, seed=0) == first  # seeded: reproducible
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])


@pytest.mark.parametrize("n", [1, 3, 7, 12])
def test_random_metrics_match_monte_carlo(n):
    analytic = random_ranking_metrics(n)
    assert set(analytic) == {"acc1", "acc3", "acc5", "avg5", "mrr"}
    rng = np.random.default_rng(n)
    trials = 20000
    # position of the true service (id 0) in a uniformly random permutation of n services
    perms = rng.random((trials, n)).argsort(axis=1)
    ranks = (perms == 0).argmax(axis=1) + 1
    simulated = {k: np.mean([case_metrics(r, n)[k] for r in ranks]) for k in analytic}
    for key, value in analytic.items():
        assert simulated[key] == pytest.approx(value, abs=0.015), key


def test_random_metrics_closed_form():
    m = random_ranking_metrics(4, k_values=(1, 2, 5))
    assert m["acc1"] == 0.25 and m["acc2"] == 0.5 and m["acc5"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert m["avg5"] == pytest.approx((0.25 + 0.5 + 0.75 + 1 + 1) / 5)


# -- rankers ---------------------------------------------------------------------------------------------------------
def all_rankers(train: list[Scenario]) -> list[Ranker]:
    rankers: list[Ranker] = [ServicePrior(), NSigma(), Baro(), NSigmaLogShare(), NSigmaLogShareTraces(), TraceP95()]
    for ranker in rankers:
        assert isinstance(ranker, Ranker)
        ranker.fit(train)
    return rankers


def test_ranking_ties_break_by_name():
    r = Ranking.from_scores({"b": 1.0, "a": 1.0, "c": 2.0, "d": float("nan")})
    assert r.services == ("c", "a", "b", "d")
    assert r.rank_of("b") == 3 and r.rank_of("zzz") == 5


@pytest.mark.parametrize("known_onset", [True, False])
def test_baselines_do_not_depend_on_the_label(known_onset):
    logs = log_table([*flat_logs(), ("c", 15, 30, "ERROR")])
    s = make_scenario(jumps={"b": 50.0}, logs=logs, root="c", onset_bin=10 if known_onset else None, step_bin=10)
    train = [make_scenario(root=r, sid=f"t/{i}", seed=i) for i, r in enumerate("ddb")]
    for ranker in all_rankers(train):
        with_label, without = ranker.rank(s), ranker.rank(s.without_label())
        assert with_label == without, ranker.name
        assert set(with_label.services) == set(SERVICES)


@pytest.mark.parametrize("known_onset", [True, False])
def test_cpu_jump_puts_service_first(known_onset):
    s = make_scenario(jumps={"c": 50.0}, onset_bin=12 if known_onset else None, step_bin=12, root="a")
    for ranker in all_rankers([]):
        if ranker.name in ("service_prior", "trace_p95"):  # no metrics read
            continue
        assert ranker.rank(s.without_label()).services[0] == "c", ranker.name


def test_pod_without_data_does_not_hide_its_sibling():
    s = make_scenario(jumps={"c": 50.0}, onset_bin=12)
    values = s.values.copy()
    values[:, s.pods.index("c-5dc8d4f9fd-llznp"), :] = np.nan  # c's second pod has no samples at all
    values[:, s.pods.index("d-5dc8d4f9fd-llznp"), 0] = np.nan  # d: one metric missing on one pod
    gappy = Scenario(id="gappy", app="t", namespace="ns", start=START, pods=s.pods, pod_service=s.pod_service,
                     metrics=s.metrics, values=values, onset=s.onset)
    for ranker in (NSigma(), Baro(), NSigmaLogShare(), NSigmaLogShareTraces()):
        ranking = ranker.rank(gappy)
        assert ranking.services[0] == "c", ranker.name
        assert all(np.isfinite(ranking.scores)), ranker.name


def test_flat_scenario_ties_by_name():
    s = make_scenario(seed=3).without_label()
    values = np.ones_like(s.values)
    flat = Scenario(id="flat", app="t", namespace="ns", start=START, pods=s.pods, pod_service=s.pod_service,
                    metrics=s.metrics, values=values, onset=s.onset)
    for ranker in all_rankers([]):
        ranking = ranker.rank(flat)
        assert ranking.services == SERVICES, ranker.name
        assert len(set(ranking.scores)) == 1, ranker.name


def test_error_share_rise_helps_nsigma_logshare():
    jumps = {"a": 80.0, "c": 30.0}  # a deviates most in metrics, c second
    quiet = make_scenario(jumps=jumps, logs=log_table(flat_logs()), root="c").without_label()
    noisy = make_scenario(
        jumps=jumps, logs=log_table([*flat_logs(), *(("c", b, 20, "FATAL") for b in range(10, 20))]), root="c"
    ).without_label()
    assert NSigma().rank(noisy).services[:2] == ("a", "c")
    increase = error_share_increase(noisy, 10)
    assert increase["c"] > 0.5 and all(abs(increase[s]) < 1e-9 for s in ("a", "b", "d"))
    assert NSigmaLogShare().rank(quiet).rank_of("c") == 2
    assert NSigmaLogShare().rank(noisy).rank_of("c") == 1


def test_error_share_without_logs_is_zero():
    s = make_scenario(logs=log_table([("a", 2, 5, "INFO"), ("a", 12, 5, "ERROR")]))
    assert error_share_increase(s, 10) == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}


def test_service_prior_orders_by_frequency_then_name():
    train = [make_scenario(root=r, sid=f"t/{i}") for i, r in enumerate(["c", "b", "c", "b", "d"])]
    prior = ServicePrior()
    prior.fit(train)
    ranking = prior.rank(make_scenario(root="a").without_label())
    assert ranking.services == ("b", "c", "d", "a")  # b and c tie at 2 -> by name; a unseen -> 0
    assert ranking.scores == pytest.approx((0.4, 0.4, 0.2, 0.0))
    empty = ServicePrior()
    empty.fit([])
    assert empty.rank(train[0]).services == SERVICES


@pytest.mark.parametrize(("n_bins", "step"), [(40, 13), (40, 25), (20, 9)])
def test_estimate_onset_finds_step(n_bins, step):
    s = make_scenario(n_bins=n_bins, onset_bin=None, step_bin=step, jumps={"a": 40.0, "b": 25.0, "d": 60.0})
    assert abs(cusum_onset(s.without_label().values) - step) <= 1


def test_estimate_onset_tolerates_missing_series():
    s = make_scenario(n_bins=40, onset_bin=None, step_bin=22, jumps={"a": 40.0, "c": 40.0})
    values = s.values.copy()
    values[:, 1, :] = np.nan  # a pod with no data at all
    values[::2, 2, 1] = np.nan  # 60 s data in 30 s bins
    gappy = Scenario(id="gappy", app="t", namespace="ns", start=START, pods=s.pods, pod_service=s.pod_service,
                     metrics=s.metrics, values=values)
    assert abs(cusum_onset(gappy.values) - 22) <= 1


def _with_p95(s: Scenario, slow: str, covered=range(6, 16)) -> Scenario:
    """Adds span metrics: every service 50 ms, `slow` at 400 ms from bin 10; bins outside `covered` uncovered."""
    from dataclasses import replace

    from lemzha.catalog import BUCKET_COLUMNS

    rows = []
    for b in range(s.n_bins):
        for service in SERVICES:
            bucket = 8 if (service == slow and b >= 10) else 5
            calls = 20.0 + (b + ord(service)) % 3
            row = {"bin": b, "service": service, "covered": b in covered, "trace_calls": calls,
                   "duration_sum_ms": calls * 40, **dict(zip(BUCKET_COLUMNS, [0.0] * bucket + [calls] * (
                       len(BUCKET_COLUMNS) - bucket), strict=True))}
            if b not in covered:
                row.update({k: np.nan for k in ("trace_calls", "duration_sum_ms", *BUCKET_COLUMNS)})
            rows.append(row)
    return replace(s, service_metrics=pd.DataFrame(rows))


def test_trace_p95_term_helps_nsigma_logshare_traces():
    jumps = {"a": 80.0, "c": 30.0}  # a deviates most in metrics, c second; only c's latency rises
    base = make_scenario(jumps=jumps, logs=log_table(flat_logs()), root="c", onset_bin=10)
    s = _with_p95(base, "c").without_label()
    scores = trace_p95_scores(s, 10)
    assert scores["c"] > 3 and all(scores[x] < 1 for x in ("a", "b", "d"))
    assert NSigmaLogShare().rank(s).rank_of("c") == 2
    assert NSigmaLogShareTraces().rank(s).rank_of("c") == 1
    assert NSigmaLogShareTraces().rank(s) == NSigmaLogShareTraces().rank(_with_p95(base, "c"))  # label-free
    # without traces the trace term ties every service, so the ranking is NSigmaLogShare's
    plain = base.without_label()
    assert NSigmaLogShareTraces().rank(plain).services == NSigmaLogShare().rank(plain).services
    # uncovered bins are missing, never zeros: a service covered only after the onset scores 0
    late = _with_p95(base, "c", covered=range(10, 16)).without_label()
    assert all(v == 0 for v in trace_p95_scores(late, 10).values())


def test_trace_p95_ranks_by_the_latency_rise_alone():
    base = make_scenario(jumps={"a": 80.0}, logs=log_table(flat_logs()), root="c", onset_bin=10)
    assert TraceP95().rank(_with_p95(base, "c").without_label()).services[0] == "c"  # a's CPU jump is not read
    assert TraceP95().rank(_with_p95(base, "b").without_label()).services[0] == "b"
    assert TraceP95().rank(base.without_label()).services == tuple(sorted(SERVICES))  # no traces: all tied
