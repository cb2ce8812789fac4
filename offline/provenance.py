"""What produced a result: git state, package versions, time. Recorded in results.json and bundle.json."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata

from lemzha.binning import rfc3339
from offline.data.store import REPO_ROOT


def git_state() -> tuple[str, bool | None]:
    """(HEAD sha, whether tracked files differ from it); ("unknown", None) outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None
    return sha, dirty


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def bench_provenance(name: str, argv: list[str]) -> dict:
    """What a benchmark JSON records about its run: the command as typed, the commit and when."""
    return {**provenance(()), "command": " ".join(["python -m offline.bench", name, *argv])}


def provenance(packages: tuple[str, ...]) -> dict:
    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "packages": package_versions(packages),
        "python": platform.python_version(),
        "created": rfc3339(datetime.now(UTC)),
    }
