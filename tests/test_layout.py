"""The layout's contracts: import directions (import-linter, configured in pyproject.toml) and README commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """The core imports neither side, product code never imports tests, the operator never imports offline, and no
    two sibling modules import each other."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is in the test extra"
    result = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def readme_commands() -> list[tuple[str, ...]]:
    """Every `python -m module [subcommand]` the README names."""
    text = (ROOT / "README.md").read_text()
    found = {tuple(filter(None, m.groups())) for m in re.finditer(r"python -m ([\w.]+)(?: ([a-z]\w*))?", text)}
    return sorted(found)


def test_the_readme_names_its_commands():
    commands = readme_commands()
    assert ("offline.lodocv",) in commands and ("offline.results",) in commands and len(commands) >= 8, commands


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_every_readme_command_answers_help(command: tuple[str, ...]):
    result = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stdout[-1000:] + result.stderr[-2000:]
