"""The evidence ranker on the real archive: the data fixes it rests on, the audit, the bundle and its properties."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lemzha.bundle import BundleError, load_bundle
from lemzha.bundle_ranker import open_ranker
from lemzha.logs import event_key


def test_templates_keep_java_code_locations(prepared):
    """ts-price-service's exception fault (nezha/20230129_21) silences PriceController#46 while #39 goes on: the
    cleaner used to mask both line numbers into one template, hiding the change."""
    logs = prepared.load("nezha/20230129_21").logs
    own = logs.loc[logs["service"] == "ts-price-service"]
    events = {event_key(t) for t in own["template"].astype(str)}
    assert {"<time> info p.c.pricecontroller#39", "<time> info p.c.pricecontroller#46"} <= events


def test_construct_data_minute_joins_the_day(prepared):
    """Nezha's fault-free minute of 2023-01-29 (construct_data/…/08_50_log.csv, 08:48-08:50 UTC) is part of the
    day's logs, at its own time: the case injected at 08:52:06 sees it in its reference."""
    s = prepared.load("nezha/20230129_01")
    minute = s.bin_of(s.start.replace(hour=8, minute=49, second=0))
    assert s.logs.loc[s.logs["bin"] == minute, "count"].sum() > 100
    assert minute < s.onset_bin


def test_windows_reach_an_hour_back(prepared):
    s = prepared.load("nezha/20230130_05")
    assert s.onset_bin == 120 and s.n_bins == 140


@pytest.mark.slow
def test_audit_reports_misses_with_alignment(prepared, tmp_path):
    from offline.data.__main__ import main

    assert main(["audit", "--out", str(tmp_path), "--all", "--id", "nezha/20230129_15"]) == 0
    cases = json.loads((tmp_path / "audit.json").read_text())
    assert [c["case"] for c in cases] == ["nezha/20230129_15"]
    case = cases[0]
    rc = case["services"][case["root_cause"]]
    # the exception in ts-travel2-service silences one of its log events
    assert rc["log_vanished"]["alert"] and "#372" in rc["log_vanished"]["text"]
    assert case["alignment"]["root_cause_vanished_event"]["event"].endswith("#372")
    assert "quiet in bins" in (tmp_path / "audit.md").read_text()


def test_audit_refuses_an_unknown_case(prepared, tmp_path, capsys):
    from offline.cli import run_cli
    from offline.data.__main__ import main

    assert run_cli(main, ["audit", "--out", str(tmp_path), "--id", "nezha/29990101_00"]) == 2
    assert "unknown case id" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_bundle_verifies_and_refuses_tampering(shipped_bundle, tmp_path):
    bundle = load_bundle(shipped_bundle)
    assert bundle.kind == "evidence" and bundle.meta["selection"]["how"].startswith("on inner validation")
    ranker = open_ranker(shipped_bundle)
    assert ranker.bundle.sha == bundle.sha and ranker.calibration is not None
    broken = tmp_path / "b"
    shutil.copytree(shipped_bundle, broken)
    (broken / "MODEL_CARD.md").write_text("edited")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(broken)
    meta = json.loads((shipped_bundle / "bundle.json").read_text())
    meta["ranker"]["config"]["threshold"] = -1
    (broken / "MODEL_CARD.md").write_bytes((shipped_bundle / "MODEL_CARD.md").read_bytes())
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="threshold"):
        load_bundle(broken)


@pytest.mark.slow
def test_shipped_bundle_reads_no_service_name(shipped_bundle, prepared):
    """Renaming every service consistently (pods, logs, traces) changes no score of the shipped ranker."""
    from offline.data.renaming import neutral_names, service_names

    ranker = open_ranker(shipped_bundle)
    for case in ("nezha/20230129_21", "nezha/20220822_03", "nezha/20230130_00"):
        s = prepared.load(case)
        names = service_names(s)
        original, renamed = ranker.rank(s.without_label()), ranker.rank(neutral_names(s).without_label())
        assert dict(zip(renamed.services, renamed.scores, strict=True)) == pytest.approx(
            {names[x]: v for x, v in zip(original.services, original.scores, strict=True)})


@pytest.mark.slow
def test_shipped_bundle_ranks_a_lone_tenfold_cpu_or_memory_jump_first(shipped_bundle, prepared):
    """Dominant evidence wins: a real TrainTicket window in which nothing moves at the onset (every series goes on
    as in its last pre-onset bins; no logs, no traces), then one service's CPU (or memory) multiplied tenfold from
    the onset on: that service ranks first, whichever it is."""
    from dataclasses import replace

    ranker = open_ranker(shipped_bundle)
    s = prepared.load("nezha/20230130_05").without_label()
    values = s.values.copy()
    after = s.n_bins - s.onset_bin
    values[s.onset_bin:] = values[s.onset_bin - after:s.onset_bin]  # the same bins again: no change at the onset
    quiet = replace(s, values=values, logs=s.logs.iloc[:0], service_metrics=None, edges=None)
    for metric in ("cpu_millicores", "memory_bytes"):
        m = quiet.metrics.index(metric)
        for service in ("ts-seat-service", "ts-ui-dashboard", "ts-station-service"):
            values = quiet.values.copy()
            pods = [i for i, p in enumerate(quiet.pods) if quiet.pod_service[p] == service]
            values[quiet.onset_bin:, pods, m] *= 10
            jumped = replace(quiet, values=values)
            assert ranker.rank(jumped).services[0] == service, (metric, service)
    assert np.isfinite(ranker.rank(quiet).scores).all()
