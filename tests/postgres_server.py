"""Test helper: a real PostgreSQL (Debian's server binaries, /usr/lib/postgresql/<version>/bin) in a temporary dir.

`initdb` makes a throw-away cluster (trust authentication, no fsync) owned by the user that runs it; `pg_ctl` starts
it on 127.0.0.1 on a free port with its unix socket in the same temporary dir, and stops it (fast shutdown: open
connections are closed) when the block ends. PostgreSQL refuses to run as root, so under root the cluster is run as
the `postgres` user that Debian's package creates. Tests skip when the binaries are absent (CI installs them).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from offline.bench.standins.prometheus_server import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "postgres"  # the cluster's owner when the tests run as root
SUPERUSER = "lemzha"


def postgres_bin() -> Path | None:
    """The newest installed server version's bin dir, or None."""
    found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").is_file()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, default=None)


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    return RUN_AS if os.geteuid() == 0 else None


def _skip_reason() -> str | None:
    if postgres_bin() is None:
        return f"PostgreSQL server not installed here (no {POSTGRES_ROOT}/*/bin/initdb; apt-get install postgresql; " \
               "CI installs it)"
    if _run_as() is not None:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as (apt-get install postgresql)"
    return None


requires_postgres = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _call(command: list[str], log: Path, user: str | None, timeout: float) -> None:
    """Run a PostgreSQL tool as `user`, its output appended to `log`; a failure raises with the log's tail."""
    with log.open("a") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, user=user, timeout=timeout,
                                check=False, cwd=log.parent)  # the server's user may not enter our cwd
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} exited with {result.returncode}: {log.read_text()[-2000:]}")


@contextmanager
def postgres_server(database: str = "optuna", timeout: float = 60.0) -> Iterator[str]:
    """Run a fresh PostgreSQL cluster with one empty `database`; yields its SQLAlchemy URL
    (postgresql://lemzha@127.0.0.1:PORT/DATABASE, no password)."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    bin_dir = postgres_bin()
    assert bin_dir is not None
    user = _run_as()
    with tempfile.TemporaryDirectory(prefix="lemzha-pg-") as tmp:
        root = Path(tmp)
        data, log = root / "data", root / "postgres.log"
        log.touch()
        if user is not None:  # the server's user must own its data dir, socket dir and log
            entry = pwd.getpwnam(user)
            for path in (root, log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        _call([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
               "--no-sync", "--no-instructions"], log, user, timeout)
        port = free_port()
        # -F: no fsync, the cluster is thrown away; -k: the socket stays out of /var/run/postgresql
        options = f"-h 127.0.0.1 -p {port} -k {root} -F"
        _call([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(int(timeout)),
               "start"], log, user, timeout + 10)
        try:
            _call([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, database], log,
                  user, timeout)
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"
        finally:
            try:
                _call([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], log, user, 40)
            except (RuntimeError, subprocess.TimeoutExpired):
                # a fast shutdown that hangs is ended at once: the cluster is deleted with the temporary dir anyway
                _call([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], log, user, 40)
