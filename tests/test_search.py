"""The nested hyper-parameter search: it never reads the held-out day, writes loadable params, resumes a study."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

import lemzha.scenario_io
import offline.data.dataset
from lemzha.text import TextEmbedder
from offline.cli import run_cli
from offline.data.dataset import Prepared
from offline.data.store import REPO_ROOT, default_cache_dir
from offline.errors import DataError
from offline.train import search
from offline.train.model_cv import select_epochs
from offline.train.params import load_params
from offline.train.train import InputOptions, PreparedCache

HELD_OUT = "2022-08-23"  # the largest day: holding it out keeps the tiny search fastest


def day_of_id(prepared: Prepared, scenario_id: str) -> str:
    return prepared.entry(scenario_id)["day"]


def without_day(prepared: Prepared, day: str, where: Path) -> Prepared:
    """The prepared cache with the scenario directories of `day` absent (the index still lists them): reading one
    fails, so a search that touches the held-out day cannot pass."""
    for entry in prepared.index["scenarios"]:
        if entry["dataset"] == "nezha" and entry["day"] == day:
            continue
        link = where / entry["id"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(prepared.directory / entry["id"], target_is_directory=True)
    return Prepared(where, prepared.index)


def spy_loads(monkeypatch) -> list[str]:
    """Record every scenario directory loaded, whichever module's name for the loader is called."""
    seen: list[str] = []
    real = lemzha.scenario_io.load_scenario

    def spy(directory, **kwargs):
        scenario = real(directory, **kwargs)
        seen.append(scenario.id)
        return scenario

    monkeypatch.setattr(lemzha.scenario_io, "load_scenario", spy)
    monkeypatch.setattr(offline.data.dataset, "load_scenario", spy)
    return seen


def tiny_settings(tmp: Path, **overrides) -> search.SearchSettings:
    settings = search.SearchSettings(held_out=HELD_OUT, trials=2, max_epochs=1, space=search.TINY_SPACE,
                                     storage=f"sqlite:///{tmp / 'optuna.db'}", out=tmp / "out", progress=False)
    return replace(settings, **overrides)


@pytest.fixture(scope="module")
def first_search(prepared, tmp_path_factory):
    """One tiny search (2 trials, 1 epoch) on a cache without the held-out day's files, with a loader spy."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("search")
    stripped = without_day(prepared, HELD_OUT, tmp / "scenarios")
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = spy_loads(monkeypatch)
        result = search.run_search(stripped, tiny_settings(tmp), default_cache_dir() / "embeddings")
    return {"tmp": tmp, "stripped": stripped, "seen": seen, "result": result}


@pytest.mark.slow
def test_search_never_reads_the_held_out_day(first_search, prepared):
    seen = first_search["seen"]
    nezha_seen = [i for i in seen if prepared.entry(i)["dataset"] == "nezha"]
    days = {day_of_id(prepared, i) for i in nezha_seen}
    assert HELD_OUT not in days
    assert not [i for i in nezha_seen if day_of_id(prepared, i) == HELD_OUT]
    # the spy did watch the loads: every other day and every LEMMA incident was read, once
    assert days == set(search.nezha_days(prepared.index)) - {HELD_OUT}
    assert sum(prepared.entry(i)["dataset"] == "lemma" for i in seen) == 4
    assert len(seen) == len(set(seen)) == len(search.allowed_entries(prepared.index, HELD_OUT))


@pytest.mark.slow
def test_a_leaking_search_would_fail(prepared, tmp_path, monkeypatch):
    """The harness of the test above catches a leak: with the day filter broken, the search cannot run."""
    stripped = without_day(prepared, HELD_OUT, tmp_path / "scenarios")
    monkeypatch.setattr(search, "allowed_entries", lambda index, held_out: index["scenarios"])
    with pytest.raises((OSError, lemzha.scenario_io.ScenarioError)):
        search.run_search(stripped, tiny_settings(tmp_path))


@pytest.mark.slow
def test_written_params_load_and_lodocv_finds_them(first_search):
    out = first_search["tmp"] / "out"
    path = out / f"fold-{HELD_OUT}.json"  # the name lodocv's --params DIRECTORY mode looks up per fold
    assert first_search["result"].path == path
    config, params, _ = load_params(path)
    data = json.loads(path.read_text())
    assert data["_search"]["held_out"] == HELD_OUT and HELD_OUT not in data["_search"]["inner_days"]
    assert data["_search"]["trials_complete"] + data["_search"]["trials_pruned"] == 2
    assert params.epochs == first_search["result"].epochs == 1
    assert config.d_model == 16 and params.crop_bins == 16  # the tiny space, not the defaults
    assert sorted(p.name for p in out.iterdir()) == ["SEARCH.md", path.name]  # no temporaries or lock files
    md = (out / "SEARCH.md").read_text()
    assert md.count(f"## {first_search['result'].study_name}") == 1 and "| trial | inner MRR |" in md


@pytest.mark.slow
def test_resuming_adds_trials_to_the_same_study(first_search):
    tmp = first_search["tmp"]
    name = first_search["result"].study_name
    again = search.run_search(first_search["stripped"], tiny_settings(tmp, trials=1),
                              default_cache_dir() / "embeddings")
    assert again.study_name == name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert len(study.trials) == 3
    md = (tmp / "out" / "SEARCH.md").read_text()
    assert md.count(f"## {name}") == 1 and "3 complete" in md  # updated in place, not appended twice
    # the same study name over another setup is refused before any data is read
    with pytest.raises(DataError, match="another space"):
        search.run_search(first_search["stripped"], tiny_settings(tmp, max_epochs=2, study_name=name))


@pytest.mark.slow
def test_select_epochs_reports_end_on_the_objective(prepared):
    """Reporting changes nothing in what is picked, and the last report is the objective the search optimises."""
    torch.set_num_threads(1)
    ids = [e["id"] for e in prepared.index["scenarios"] if e["dataset"] == "nezha" and e["day"] != HELD_OUT]
    by_day: dict[str, list[str]] = {}
    for i in ids:
        by_day.setdefault(day_of_id(prepared, i), []).append(i)
    train = [prepared.load(i) for day in sorted(by_day) for i in by_day[day][:3]]
    config, params, _ = load_params()
    config, params = search.trial_params({"d_model": 16, "n_heads": 2, "n_layers": 1, "d_fusion": 16},
                                         search.TINY_SPACE, config, params, epochs=2)
    cache = PreparedCache(TextEmbedder(default_cache_dir() / "embeddings"))
    reports: list[tuple[int, float]] = []
    ours = select_epochs(train, params, config, cache, InputOptions(), lambda s, v: reports.append((s, v)))
    assert ours == select_epochs(train, params, config, cache, InputOptions())
    assert [s for s, _ in reports] == list(range(len(by_day)))
    assert reports[-1][1] == pytest.approx(ours["mrr"])


def test_allowed_entries_filter_by_day_before_loading(prepared):
    index = prepared.index
    allowed = search.allowed_entries(index, HELD_OUT)
    assert all(e["day"] != HELD_OUT for e in allowed if e["dataset"] == "nezha")
    assert sum(e["dataset"] == "lemma" for e in allowed) == 4
    assert len(allowed) == len(index["scenarios"]) - sum(e["day"] == HELD_OUT for e in index["scenarios"]
                                                          if e["dataset"] == "nezha")
    assert search.allowed_entries(index, None) == index["scenarios"]  # --all-days


def test_unknown_fold_is_a_one_line_error(prepared, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "offline.search", "--fold", "2099-01-01", "--storage",
         f"sqlite:///{tmp_path / 'o.db'}", "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown fold '2099-01-01'" in result.stderr
    assert "2022-08-22" in result.stderr  # it names the valid folds
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--storage", "not a url"], "bad --storage"),
        (["--storage", "sqlite://"], "needs a file"),
        (["--heartbeat", "0"], "--heartbeat must be at least 1 second"),
        (["--storage", "postgresql://lemzha:s3cret@127.0.0.1:1/optuna"], "cannot open --storage"),
    ],
)
def test_bad_inputs_are_one_line_errors(args, message, tmp_path, capsys):
    argv = ["--fold", HELD_OUT, "--out", str(tmp_path / "out"), *args]
    if "--storage" not in args:
        argv += ["--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    assert run_cli(search.main, argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err
    assert "s3cret" not in err  # passwords in storage URLs are never echoed
    assert not (tmp_path / "out").exists()
