"""Anomaly detectors (lemzha.detect) and their benchmark (offline.detect) on the real Nezha days."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from lemzha.detect import (
    ALL_DETECTORS,
    EFFECT_BINS,
    EPS,
    DetectionData,
    EcdfCalibrator,
    Stream,
    estimate_onset,
    label_bins,
    make_detector,
    select_onset_estimator,
)
from lemzha.detect.base import carry_forward, fixed_calibration
from lemzha.detect.zeroshot import BocpdDetector
from offline.data.nezha import DAYS, list_faults
from offline.eval import detect as bench

DAY = {d.day: d for d in DAYS}


@pytest.fixture(scope="module")
def days(nezha_root):
    """Every day as (stream, faults), experiment period only."""
    return {d.day: bench.load_day(nezha_root, d) for d in DAYS}


def head(stream: Stream, faults, n_bins: int):
    """The first n_bins of a day, with the faults whose injection lies inside."""
    kept = [f for f in faults if f.bin < n_bins]
    return replace(stream, values=stream.values[:n_bins], labels=stream.labels[:n_bins],
                   injection_bins=tuple(f.bin for f in kept)), kept


# -- the label rule ----------------------------------------------------------------------------------------------------
def test_effect_duration_is_five_minutes():
    assert EFFECT_BINS == 10  # 5 min of 30 s bins


def test_label_rule_synthetic_overlap_and_edges():
    labels = label_bins(30, [2, 8, 28, -5])
    expected = np.zeros(30, bool)
    expected[2:18] = True  # 2..11 and 8..17 merge
    expected[28:30] = True  # cut at the end
    expected[0:5] = True  # an injection before the stream still marks its effect
    assert (labels == expected).all()


def test_label_rule_on_real_fault_lists(nezha_root, days):
    """Each injection bin starts a labelled run that lasts EFFECT_BINS unless another injection extends it; the
    bin before an injection is normal unless an earlier effect covers it. 2023-01-29 has faults 4 min apart."""
    overlaps = 0
    for day, (stream, faults) in days.items():
        raw = list_faults(nezha_root, DAY[day])
        assert len(faults) == len(raw) == len(stream.injection_bins)
        bins = np.array(stream.injection_bins)
        # the injection bin is the bin holding inject_time (read from the string, in UTC)
        for f, b in zip(raw, bins, strict=True):
            assert stream.start.timestamp() + 30 * b <= f.time.timestamp() < stream.start.timestamp() + 30 * (b + 1)
        labels = stream.labels
        covered = np.zeros(stream.n_bins, bool)
        for b in bins:
            covered[b : b + EFFECT_BINS] = True
        assert (labels == covered).all()
        for i, b in enumerate(bins):
            assert labels[b]
            earlier = bins[:i]
            before_covered = bool(((earlier <= b - 1) & (b - 1 < earlier + EFFECT_BINS)).any())
            assert labels[b - 1] == before_covered
            later = bins[i + 1 :]
            end = b + EFFECT_BINS
            if (later < end).any():
                overlaps += 1
                assert labels[b : later[later < end].max() + EFFECT_BINS].all()
            elif not ((bins <= end) & (end < bins + EFFECT_BINS)).any():
                assert labels[end - 1] and not labels[end]
    assert overlaps >= 1  # the overlapping case is exercised on real data


# -- calibration, BOCPD, import hygiene -----------------------------------------------------------------------------
def test_calibrations_map_into_zero_one():
    s = fixed_calibration(np.array([0.0, 1.0, np.nan, np.inf, 50.0]))
    assert (s > 0).all() and (s <= 1).all() and s[0] == pytest.approx(EPS)
    cal = EcdfCalibrator().fit(np.arange(100.0))
    out = cal(np.array([-1.0, 50.0, 1e9, np.nan]))
    assert (out > 0).all() and (out <= 1).all() and out[2] == 1.0 and np.all(np.diff(out[:3]) > 0)
    assert carry_forward(np.array([0.3, 0.9, 0.1]), np.array([False, True, False])).tolist() == [EPS, 0.9, 0.9]


def test_bocpd_sees_a_step():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, size=(200, 1, 1))
    x[120:] += 8
    x[1::2] = np.nan  # 60 s data on the 30 s grid
    cp = BocpdDetector().change_probability(x)[:, 0]
    assert np.nanargmax(cp[100:140]) + 100 in range(120, 126)
    assert np.nanmax(cp[80:118]) < 0.5 < np.nanmax(cp[120:126])


def test_package_import_is_torch_free():
    code = ("import sys, numpy as np; import lemzha.detect as d; "
            "v = np.random.default_rng(0).normal(size=(30, 3, 18)); "
            "[d.make_detector(n).score(v) for n in d.ZERO_SHOT]; "
            "m = d.make_detector('logistic'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- every detector on real data -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_detector_on_real_day_slices(days, name):
    train = [head(*days["2022-08-22"], 400)[0], head(*days["2023-01-29"], 400)[0]]
    test, _ = head(*days["2022-08-23"], 300)
    det = make_detector(name)
    det.fit(DetectionData(train) if det.needs_training else None)
    scores = det.score(test.values)
    assert scores.shape == (test.n_bins,)
    assert np.isfinite(scores).all() and (scores > 0).all() and (scores <= 1).all()
    assert len(np.unique(scores)) > 5  # not constant
    # a window with most samples missing still scores
    holes = test.values[:40].copy()
    holes[::3] = np.nan
    assert np.isfinite(det.score(holes)).all()
    thr = float(np.quantile(scores, 0.9))
    b = det.onset(scores, thr)
    assert b is None or 0 <= b < test.n_bins
    window = SimpleNamespace(values=test.values[100:124])
    assert 1 <= estimate_onset(window, det, thr) <= 23


@pytest.mark.slow
def test_untrained_few_shot_detectors_fall_back_to_zero_shot(days):
    stream, _ = head(*days["2022-08-22"], 200)
    zero = make_detector("robust_z").score(stream.values)
    for name in ("logistic", "gbm", "isolation_forest", "lstm", "lstm_ae"):
        assert np.allclose(make_detector(name).fit(None).score(stream.values), zero)


# -- train-only fitting ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_test_day_bin_reaches_fit(days, monkeypatch):
    """Spy on every detector's fit, the feature selector's fit, the scaler input and the onset selection: within a
    fold, nothing derived from the test day may reach them."""
    from lemzha.detect import features, lstm, supervised, zeroshot

    slices = {d: head(*days[d], 200) for d in days}  # 100 min a day: every path runs, CI stays fast
    streams = {d: s for d, (s, _) in slices.items()}
    faults = {d: f for d, (_, f) in slices.items()}
    test_day = "2022-08-23"
    test_values = streams[test_day].values
    test_rows = {tuple(r) for r in features.window_features(test_values)[bench.CHUNK_BINS:]}
    seen: dict[str, list] = {"fit": [], "selector": [], "windows": []}

    def spy_fit(original):
        def wrapper(self, train):
            if train is not None:
                for s in train.streams:
                    assert s.name != test_day
                    assert not np.shares_memory(s.values, test_values)
                seen["fit"].append((self.name, train.names))
            return original(self, train)
        return wrapper

    for cls in (zeroshot.RobustZDetector, zeroshot.BocpdDetector, supervised.FeatureDetector,
                lstm._SequenceDetector):
        monkeypatch.setattr(cls, "fit", spy_fit(cls.fit))
    original_selector = features.FeatureSelector.fit

    def selector_fit(self, x, y):
        assert not ({tuple(r) for r in np.asarray(x, np.float32)} & test_rows - {tuple(np.zeros(x.shape[1]))})
        seen["selector"].append(x.shape)
        return original_selector(self, x, y)

    monkeypatch.setattr(features.FeatureSelector, "fit", selector_fit)
    original_select, original_threshold = bench.select_onset_estimator, bench.fit_onset_threshold

    def check_windows(windows):
        for values, _ in windows:
            assert not np.shares_memory(values, test_values)
        seen["windows"].append(len(windows))

    def select(windows, *a, **k):
        check_windows(windows)
        return original_select(windows, *a, **k)

    def threshold(det, windows):
        check_windows(windows)
        return original_threshold(det, windows)

    monkeypatch.setattr(bench, "select_onset_estimator", select)
    monkeypatch.setattr(bench, "fit_onset_threshold", threshold)
    result = bench.run_fold(test_day, streams, faults, list(ALL_DETECTORS), (0.0, 1.0), 0, True, lambda: None)
    trained = {n for n, _ in seen["fit"]}
    assert {"logistic", "gbm", "isolation_forest", "lstm", "lstm_ae"} <= trained
    assert seen["selector"] and seen["windows"]
    assert set(result["detectors"]) == set(ALL_DETECTORS)
    for m in result["detectors"].values():
        assert 0 <= m["f1"] <= 1 and 0 <= m["pr_auc"] <= 1 and 0 <= m["roc_auc"] <= 1


# -- RCA windows and the CLI ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rca_windows_match_lodocv(prepared, days):
    """offline.detect cuts the same windows from the day stream as lodocv's unknown-onset mode does from
    the scenario, with the same values."""
    from offline.train.folds import unknown_onset_window

    for day in ("2022-08-22", "2023-01-29"):
        stream, faults = days[day]
        windows = bench.rca_windows(stream, faults)
        for fault, (values, fault_bin) in list(zip(faults, windows, strict=True))[:6]:  # the first starts early
            shown = unknown_onset_window(prepared.load(fault.id), 0)
            assert shown.label.fault_bin == fault_bin
            assert np.array_equal(values, shown.values, equal_nan=True)


def test_onset_selection_prefers_the_better_candidate():
    rng = np.random.default_rng(1)
    windows = []
    for k in range(6):
        x = rng.normal(10, 0.2, size=(24, 4, 18))
        x[8 + k :] += 5
        x[1::2] = np.nan
        windows.append((x, 8 + k))
    chosen = select_onset_estimator(windows)
    assert chosen.train_error <= min(chosen.candidates.values()) + 1e-9
    assert chosen.train_error <= 2
    assert all(1 <= chosen(v) <= 23 for v, _ in windows)


@pytest.mark.slow
def test_cli_quick(tmp_path):
    out = tmp_path / "detect"
    rc = bench.main(["--quick", "--out", str(out), "--no-progress", "--detectors", "robust_z,bocpd,logistic"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["git_sha"] and results["label_rule"]["effect_bins"] == EFFECT_BINS
    assert set(results["summary"]) == {"robust_z", "bocpd", "logistic"}
    assert set(results["learning_curve"]["logistic"]) == {"0.0", "0.25", "1.0"}
    for name in ("report.md", "pr_curves.png", "learning_curve.png"):
        assert (out / name).is_file()


def test_cli_rejects_unknown_detector(capsys):
    from offline.cli import run_cli

    assert run_cli(bench.main, ["--detectors", "moment", "--no-progress"]) == 2
    assert "unknown detector" in capsys.readouterr().err


@pytest.mark.slow
def test_lodocv_estimated_onset_uses_training_days_only(prepared, monkeypatch):
    """lodocv's estimated-onset mode: the estimator is chosen on training-day windows only, and the shown window
    is the unknown-onset window with an onset in range."""
    from offline.train import folds

    scenarios = [prepared.load(i) for i in prepared.ids_of("nezha", app="onlineboutique")]
    train = [s for s in scenarios if folds.day_of(s) == "2022-08-22"]
    test = [s for s in scenarios if folds.day_of(s) == "2022-08-23"]
    test_ids = {s.id for s in test}
    original = folds.unknown_onset_window
    labelled: list[str] = []

    def spy(scenario, seed):
        labelled.append(scenario.id)
        return original(scenario, seed)

    monkeypatch.setattr(folds, "unknown_onset_window", spy)
    estimator = folds.fold_onset_estimator(train)
    assert labelled and not set(labelled) & test_ids
    for case in test[:5]:
        shown = folds.estimated_onset_window(case, 0, estimator)
        plain = original(case, 0)
        assert np.array_equal(shown.values, plain.values, equal_nan=True)
        assert 1 <= shown.onset_bin <= shown.n_bins - 1
