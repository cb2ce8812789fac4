"""Shared fixtures. Tests run on the real archives in ../shared/datasets (CI has them), extracted once into the
project cache; nothing downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.store import ensure_extracted


@pytest.fixture(scope="session")
def nezha_root() -> Path:
    return ensure_extracted("nezha")


@pytest.fixture(scope="session")
def lemzhak_root() -> Path:
    return ensure_extracted("lemzha-k")


@pytest.fixture(scope="session")
def prepared():
    from offline.dataset import prepare

    return prepare(progress=False)
