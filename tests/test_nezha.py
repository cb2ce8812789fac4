import shutil
from datetime import UTC, datetime

import numpy as np
import pytest

from offline.data import nezha
from offline.errors import DataError

DAY_0822, DAY_0823, DAY_0129, DAY_0130 = nezha.DAYS


def test_all_101_faults_sorted_per_day(nezha_root):
    counts = {d.day: len(nezha.list_faults(nezha_root, d)) for d in nezha.DAYS}
    assert counts == {"2022-08-22": 24, "2022-08-23": 32, "2023-01-29": 28, "2023-01-30": 17}
    for day in nezha.DAYS:
        times = [f.time for f in nezha.list_faults(nezha_root, day)]
        assert times == sorted(times)


def test_fault_time_is_the_string_not_the_broken_epoch(nezha_root):
    faults = nezha.list_faults(nezha_root, DAY_0129)
    # 24 faults of 2023-01-29 carry an epoch about 8 h off; the string matches the metric clock
    assert sum(abs(f.epoch_offset_s) > 3600 for f in faults) == 24
    assert faults[0].time == datetime(2023, 1, 29, 8, 43, 4, tzinfo=UTC)  # the string, read as UTC


def test_metric_time_comes_from_time_string_not_timestamp(nezha_root):
    metrics = nezha.read_day_metrics(nezha_root, DAY_0822)
    ad = next(p for p in metrics.pods if p.startswith("adservice"))
    times = metrics.series[ad].times
    # TimeStamp says 2028 for this pod; the Time string says 2022-08-22
    assert times.min().year == 2022 and times.max().year == 2022
    assert metrics.quality.malformed == 0


def test_adservice_has_metrics_in_its_windows(nezha_root):
    faults = nezha.list_faults(nezha_root, DAY_0822)
    metrics = nezha.read_day_metrics(nezha_root, DAY_0822)
    empty_logs = nezha.DayLogs(nezha._empty_day_logs(), frozenset(), nezha.Quality())
    ad_faults = [f for f in faults if f.service == "adservice"]
    assert ad_faults
    for fault in ad_faults:
        built = nezha.build_scenario(fault, faults, metrics, empty_logs, None, nezha.Window())
        s = built.scenario
        pod = s.pods.index(fault.pod)
        assert s.mask[:, pod, :].any(), "adservice must not be all-NaN (the seed's 2028 bug)"
        assert s.label.fault_bin == s.bin_of(fault.time)
        # 60 s data on a 30 s grid: about half the bins carry a sample, nothing is repeated
        share = s.mask[:, pod, 0].mean()
        assert 0.4 <= share <= 0.6


def test_window_parameters_move_the_fault_bin(nezha_root):
    faults = nezha.list_faults(nezha_root, DAY_0130)
    metrics = nezha.read_day_metrics(nezha_root, DAY_0130)
    empty_logs = nezha.DayLogs(nezha._empty_day_logs(), frozenset(), nezha.Quality())
    from datetime import timedelta

    short = nezha.Window(timedelta(minutes=3), timedelta(minutes=7))
    s = nezha.build_scenario(faults[3], faults, metrics, empty_logs, None, short).scenario
    assert s.label.fault_bin == 6 and s.n_bins in (20, 21)
    s = nezha.build_scenario(faults[3], faults, metrics, empty_logs, None, nezha.Window()).scenario
    assert s.label.fault_bin == 120 and s.n_bins == 140  # the default: an hour of reference, 10 min after


def test_other_injections_inside_window_are_recorded(nezha_root):
    faults = nezha.list_faults(nezha_root, DAY_0823)
    metrics = nezha.read_day_metrics(nezha_root, DAY_0823)
    empty_logs = nezha.DayLogs(nezha._empty_day_logs(), frozenset(), nezha.Quality())
    s = nezha.build_scenario(faults[5], faults, metrics, empty_logs, None, nezha.Window()).scenario
    expected = [f for f in faults if f is not faults[5] and s.start <= f.time < s.end]
    assert len(s.label.other_injections) == len(expected) > 0


def copy_day(nezha_root, tmp_path, day):
    src = nezha_root / "rca_data" / day.day
    dst = tmp_path / "rca_data" / day.day
    shutil.copytree(src / "metric", dst / "metric")
    shutil.copy(src / f"{day.day}-fault_list.json", dst)
    return dst


def test_malformed_metric_rows_are_skipped_and_counted(nezha_root, tmp_path):
    dst = copy_day(nezha_root, tmp_path, DAY_0823)
    path = next((dst / "metric").glob("frontend-*_metric.csv"))
    lines = path.read_text().splitlines()
    lines[5] = "not a time,1,frontend,x,y"
    path.write_text("\n".join(lines) + "\n")
    metrics = nezha.read_day_metrics(tmp_path, DAY_0823)
    assert metrics.quality.malformed == 1
    assert len(metrics.series[path.name.removesuffix("_metric.csv")].times) == len(lines) - 2


def test_more_than_one_percent_malformed_is_an_error(nezha_root, tmp_path):
    dst = copy_day(nezha_root, tmp_path, DAY_0823)
    path = next((dst / "metric").glob("frontend-*_metric.csv"))
    lines = path.read_text().splitlines()
    for i in range(1, len(lines), 20):
        lines[i] = "garbage,,,"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="malformed"):
        nezha.read_day_metrics(tmp_path, DAY_0823)


def test_missing_day_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="missing"):
        nezha.list_faults(tmp_path, DAY_0822)


@pytest.mark.slow
def test_trainticket_logs_deduplicated_and_binned_by_outer_timestamp(nezha_root):
    logs = nezha.read_day_logs(nezha_root, DAY_0130)
    assert logs.quality.duplicates > 0  # overlapping minute files exist
    table = logs.table
    assert not table.duplicated(["bin_time", "service", "template", "level"]).any()
    assert (table["bin_time"] % (30 * 10**9) == 0).all()
    assert set(table["level"].unique()) <= {"DEBUG", "INFO", "WARN", "ERROR", "FATAL", "UNKNOWN"}
    assert (table["level"] == "ERROR").any()
    assert table["service"].str.startswith("ts-").all()
    # binned by the outer UTC Timestamp, not the UTC+8 clock inside the text
    hours = np.unique((table["bin_time"] // 3_600_000_000_000) % 24)
    assert hours.min() >= 11 and hours.max() <= 15
