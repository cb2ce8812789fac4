"""The CLIs as a user runs them: counts, one-line errors, non-zero exits, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offline.data.store import REPO_ROOT


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=1800)


def test_validate_json_counts_every_fault(prepared, tmp_path):
    result = run("offline.data", "validate", "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_faults"] == 101 and report["lemma"] == 4
    assert report["per_day"] == {"2022-08-22": 24, "2022-08-23": 32, "2023-01-29": 28, "2023-01-30": 17}
    assert sum(report["per_fault_type"].values()) == 101
    assert report["per_app"] == {"onlineboutique": 56, "trainticket": 45}
    assert len(report["scenarios"]) == 105
    first = report["scenarios"][0]
    for key in ("id", "app", "day", "fault_type", "root_cause_service", "n_pods", "n_services", "metric_coverage",
                "log_coverage", "contaminated"):
        assert key in first
    assert (tmp_path / "validate.md").read_text().startswith("# Dataset validation")
    assert any("confound" in line for line in report["card"])


def test_unknown_scenario_id_is_one_line_error(prepared, tmp_path):
    result = run("offline.data", "validate", "--id", "nezha/20990101_00", "--out", str(tmp_path / "v"))
    assert result.returncode == 2 and "unknown scenario id" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "v").exists()
    ok = run("offline.data", "validate", "--json", "--id", "nezha/20230129_03", "--out", str(tmp_path / "v"))
    assert ok.returncode == 0 and [r["id"] for r in json.loads(ok.stdout)["scenarios"]] == ["nezha/20230129_03"]


def test_wrong_datasets_path_is_one_line_error(tmp_path):
    result = run("offline.data", "prepare", "--datasets", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "datasets directory not found" in result.stderr
    assert not (tmp_path / "c" / "scenarios").exists()


def test_corrupt_archive_is_one_line_error_and_leaves_nothing(tmp_path):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "nezha.tar.xz").write_bytes(b"corrupt")
    result = run("offline.data", "prepare", "--datasets", str(datasets), "--cache", str(tmp_path / "c"))
    assert result.returncode == 2 and "sha256" in result.stderr
    assert not (tmp_path / "c" / "raw" / "nezha").exists()


def test_lodocv_rejects_unknown_fold_protocol_and_bad_params(prepared, tmp_path):
    result = run("offline.lodocv", "--quick", "--folds", "2099-01-01", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "unknown fold" in result.stderr
    result = run("offline.lodocv", "--quick", "--protocol", "week", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "unknown protocol" in result.stderr and len(result.stderr.splitlines()) == 1
    result = run("offline.lodocv", "--quick", "--protocol", "app", "--folds", "2023-01-29",
                 "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "unknown fold" in result.stderr and "onlineboutique" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run("offline.lodocv", "--quick", "--with-model", "--params", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "invalid JSON" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_lodocv_quick_end_to_end(prepared, tmp_path):
    out = tmp_path / "run"
    result = run("offline.lodocv", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["shipped"] == "evidence" and set(results["protocols"]) == {"day", "app"}
    day, app = results["protocols"]["day"], results["protocols"]["app"]
    assert day["n_cases"] == app["n_cases"] == 101
    assert day["folds"] == ["2022-08-22", "2022-08-23", "2023-01-29", "2023-01-30"]
    assert app["folds"] == ["onlineboutique", "trainticket"]
    for block in (day, app):
        names = set(block["rankers"])
        assert {"evidence", "simplerca", "nsigma_logshare", "baro", "random", "unknown_onset:evidence",
                "neutral_names:evidence"} <= names
        for summary in block["rankers"].values():  # one shape for every ranker
            assert {"pooled", "fold_mean", "per_fold", "per_app", "per_fault_type"} <= set(summary)
        metric = block["rankers"]["evidence"]["pooled"]["acc1"]
        assert set(metric) == {"mean", "std", "ci95", "n"} and metric["n"] == 101
        assert metric["ci95"][0] <= metric["mean"] <= metric["ci95"][1]
        # names never matter: the renamed cases rank the same
        assert block["rankers"]["neutral_names:evidence"]["pooled"] == block["rankers"]["evidence"]["pooled"]
        for fold, info in block["inner_validation"].items():
            assert fold not in info["inner_days"] and info["name"] in info["mrr"]
        assert set(block["significance"]) >= {"simplerca", "nsigma_logshare", "baro"}
    assert results["provenance"]["git_sha"] and results["target_check"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    shipped = [r for r in rows if r["ranker"] == "evidence" and r["protocol"] == "day"]
    assert len(shipped) == 101 and all(r["rank"] >= 1 for r in shipped)
    for name in ("report.md", "day_per_fold_acc1.png", "app_per_fault_type_acc1.png", "timing.json"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert report.index("| **evidence** |") < report.index("| baro |")  # the shipped ranker first

    # RESULTS.md and the README's block are written from this run, naming its command and commit
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"provenance": {"command": "python -m offline.bench ranker", "git_sha": "abc1234"},
                                 "ms_per_case": {"trainticket": 7.25},
                                 "ms_per_case_known_onset": {"trainticket": {"median": 6.78, "n": 45}},
                                 "memory_curve": [{"incidents": 10, "rss_mib": 362.0},
                                                  {"incidents": 20, "rss_mib": 363.3}]}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\ntail\n")
    result = run("offline.results", "--lodocv", str(out / "results.json"), "--bench", str(bench),
                 "--out", str(tmp_path / "RESULTS.md"), "--readme", str(readme))
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "RESULTS.md").read_text()
    command = results["provenance"]["command"]
    assert command in written and "| **evidence** |" in written and "| ms_per_case / trainticket | 7.25 |" in written
    assert "memory_curve:\n\n| incidents | rss_mib |\n|---|---|\n| 10 | 362.0 |\n| 20 | 363.3 |" in written
    block = readme.read_text()
    assert "old" not in block and block.endswith("<!-- results:end -->\n\ntail\n") and command in block
    acc1 = results["protocols"]["day"]["rankers"]["evidence"]["pooled"]["acc1"]["mean"]
    assert f"| **evidence** (shipped) | {acc1:.3f}" in block
    assert "| ranking one case, onset given (median) | trainticket 6.8 ms | `python -m offline.bench ranker` |" in block


def test_scenario_file_with_service_without_pods_is_refused(prepared, tmp_path):
    import shutil

    from lemzha.scenario import ScenarioError
    from lemzha.scenario_io import load_scenario

    src = prepared.directory / prepared.ids[0]
    dst = tmp_path / "s"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "scenario.json").read_text())
    meta["services"].append("ghost-service")
    (dst / "scenario.json").write_text(json.dumps(meta))
    with pytest.raises(ScenarioError, match="services"):
        load_scenario(dst)
    meta["pod_service"] = {}
    (dst / "scenario.json").write_text(json.dumps(meta))
    with pytest.raises(ScenarioError, match="without a service"):
        load_scenario(Path(dst))


def test_results_refuses_bad_inputs_and_writes_nothing(tmp_path):
    out = tmp_path / "RESULTS.md"
    result = run("offline.results", "--lodocv", str(tmp_path / "none.json"), "--out", str(out))
    assert result.returncode == 2 and "offline.lodocv results not found" in result.stderr
    (tmp_path / "other.json").write_text('{"rankers": {}}')
    result = run("offline.results", "--lodocv", str(tmp_path / "other.json"), "--out", str(out))
    assert result.returncode == 2 and "not an offline.lodocv results.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_results_block_needs_exactly_one_pair_of_markers():
    from offline.eval.results import BEGIN, END, ResultsError, replace_block

    assert replace_block(f"a\n{BEGIN}\nold\n{END}\nb", "new", Path("R.md")) == f"a\n{BEGIN}\nnew\n{END}\nb"
    for text in ("no markers", f"{END}{BEGIN}", f"{BEGIN}{END}{BEGIN}{END}"):
        with pytest.raises(ResultsError, match="exactly one"):
            replace_block(text, "new", Path("R.md"))
