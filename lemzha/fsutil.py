"""File helpers used wherever the project writes or verifies data: one sha256, one atomic directory swap, one
inter-process lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def replace_directory(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, replacing any old one whole, so that readers see the old
    or the new directory and never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


@contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) across processes: two runs building the same cache
    entry take turns, and the second finds the first one's result. Released when the holder exits, even killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
