"""Shared fixtures. Tests run on the real archives in ../shared/datasets (CI has them), extracted once into the
project cache; nothing downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.data.store import ensure_extracted


@pytest.fixture(scope="session")
def nezha_root() -> Path:
    return ensure_extracted("nezha")


@pytest.fixture(scope="session")
def lemzhak_root() -> Path:
    return ensure_extracted("lemzha-k")


@pytest.fixture(scope="session")
def prepared():
    from offline.data.dataset import prepare

    return prepare(progress=False)


@pytest.fixture(scope="session")
def shipped_bundle(prepared) -> Path:
    """The bundle `python -m offline.export` writes by default (the evidence ranker), once per version of the code
    and data (offline/train/bundle_cache.py)."""
    from offline.train.bundle_cache import shipped_bundle as cached

    return cached(prepared)


@pytest.fixture(scope="session")
def model_bundle(prepared) -> Path:
    """One `offline.export --ranker model --quick` bundle per version of the code and data, with the trained torch
    weights beside it (torch_state.pt) for parity tests."""
    from offline.train.bundle_cache import model_bundle as cached

    return cached(prepared)


@pytest.fixture(scope="session")
def replayed(prepared, tmp_path_factory) -> dict[str, Path]:
    """One backfill of a TrainTicket and an OnlineBoutique fault (nezha/20230129_05, nezha/20220822_03) into a
    Prometheus data dir, with the Loki stand-in's log file, as `python -m offline.replay` writes them."""
    from offline.bench import replay
    from offline.bench.standins.prometheus_server import PROMTOOL

    if not PROMTOOL.is_file():
        pytest.skip("promtool not installed (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("replay")
    argv = ["--ids", "nezha/20230129_05,nezha/20220822_03", "--prom-data", str(root / "data"),
            "--logs", str(root / "logs.jsonl"), "--no-progress", "--cache-dir", str(prepared.directory.parent.parent)]
    assert replay.main(argv) == 0
    return {"data": root / "data", "logs": root / "logs.jsonl"}
