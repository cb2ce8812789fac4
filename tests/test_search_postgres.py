"""Search workers on one study in a real PostgreSQL: they share the trial numbering, and the trial of a worker killed
mid-trial is marked failed by the others and its parameters tried again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from offline.data.store import REPO_ROOT
from offline.errors import DataError
from offline.train import search
from tests.postgres_server import postgres_server, requires_postgres
from tests.test_search import HELD_OUT

HEARTBEAT = 2  # seconds; a trial silent for search.STALE_HEARTBEATS of them is stale
STUDY = "shared"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class Worker:
    """One `python -m offline.search` process on the shared study (the tiny space, one epoch per inner fit)."""

    def __init__(self, name: str, url: str, tmp: Path, trials: int, seed: int) -> None:
        self.log = tmp / f"{name}.log"
        command = [sys.executable, "-m", "offline.search", "--fold", HELD_OUT, "--tiny", "--max-epochs", "1",
                   "--trials", str(trials), "--seed", str(seed), "--threads", "1", "--storage", url,
                   "--study-name", STUDY, "--heartbeat", str(HEARTBEAT), "--out", str(tmp / "out")]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def trials(self, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        return [t for t in trials if str(t.user_attrs.get("worker", "")).endswith(f":{self.proc.pid}")]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited early with {self.proc.returncode}: {self.log.read_text()[-3000:]}")

    def finish(self, timeout: float = 600) -> None:
        """Wait for the worker; it must succeed."""
        returncode = self.proc.wait(timeout=timeout)
        assert returncode == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID, only the process this test started
            self.proc.wait()


def all_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The shared study's trials ([] until a worker has created it)."""
    storage = search.open_storage(url, HEARTBEAT)
    try:
        if STUDY not in {s.study_name for s in storage.get_all_studies()}:
            return []
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def kill_mid_trial(victim: Worker, other: Worker, url: str, timeout: float = 600) -> optuna.trial.FrozenTrial:
    """SIGKILL `victim` once it has finished a trial and is running another while `other` runs one too (so both run
    at once); returns the trial it was running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        victim.check_alive()
        other.check_alive()
        trials = all_trials(url)
        running = [t for t in victim.trials(trials) if t.state == optuna.trial.TrialState.RUNNING]
        finished = [t for t in victim.trials(trials) if t.state in FINISHED]
        if running and finished and any(t.state == optuna.trial.TrialState.RUNNING for t in other.trials(trials)):
            victim.kill()
            return running[0]
        time.sleep(0.2)
    raise AssertionError("the two workers never ran trials at the same time")


@pytest.mark.slow
@requires_postgres
def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_failed_and_retried(prepared, tmp_path):
    with postgres_server() as url:
        # a would run 20 trials: it is killed during its second or a later one
        workers = {"a": Worker("a", url, tmp_path, trials=20, seed=1),
                   "b": Worker("b", url, tmp_path, trials=3, seed=2)}
        try:
            killed = kill_mid_trial(workers["a"], workers["b"], url)
            # the killed trial's last heartbeat is at the latest the kill: after the grace period it is stale for
            # certain, and the next trial started on the study (the third worker's at the latest) must fail it
            time.sleep(search.STALE_HEARTBEATS * HEARTBEAT + 1)
            workers["c"] = Worker("c", url, tmp_path, trials=1, seed=3)
            workers["b"].finish()
            workers["c"].finish()
        finally:
            for worker in workers.values():
                worker.kill()
        trials = all_trials(url)

    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # one numbering, nothing duplicated or skipped
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == optuna.trial.TrialState.FAIL  # not left RUNNING forever
    # not lost: its parameters were run again, once, by a surviving worker
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == by_number[killed.number].params == killed.params != {}
    assert workers["b"].trials([retries[0]]) or workers["c"].trials([retries[0]])
    # both workers of the first pair contributed finished trials; the survivors ran exactly their budget
    a_done = [t for t in workers["a"].trials(trials) if t.state in FINISHED]
    assert a_done and len([t for t in workers["b"].trials(trials) if t.state in FINISHED]) == 3
    assert len([t for t in workers["c"].trials(trials) if t.state in FINISHED]) == 1
    assert len(trials) == len(a_done) + 1 + 3 + 1
    assert not [t for t in trials if t.state not in (*FINISHED, optuna.trial.TrialState.FAIL)]


@requires_postgres
def test_workers_starting_together_on_an_empty_database_all_open_it():
    """Workers on several machines start at once on a new database: all race to create Optuna's tables, and in
    PostgreSQL the losers see a unique-key violation on the catalog rather than "already exists"."""
    errors: list[str] = []
    with postgres_server() as url:
        start = threading.Barrier(4)

        def open_one() -> None:
            start.wait()
            try:
                search.open_storage(url).engine.dispose()
            except DataError as err:
                errors.append(str(err))

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        storage = search.open_storage(url)
        try:
            assert storage.get_all_studies() == []  # the schema is there and usable
            assert storage.engine.dialect.driver == "psycopg"  # the `postgres` extra's driver, whatever SQLAlchemy
        finally:
            storage.engine.dispose()


@requires_postgres
def test_a_storage_survives_its_database_connections_being_dropped():
    """Trials take minutes and workers sit on other machines: a pooled connection the server or the network has
    closed meanwhile is replaced, not reported as a failed trial."""
    import sqlalchemy

    with postgres_server() as url:
        storage = search.open_storage(url)
        admin = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            optuna.create_study(storage=storage, study_name=STUDY)
            with admin.connect() as connection:  # what a server restart or a dropped TCP connection does
                dropped = connection.execute(sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database()")).scalar()
            assert dropped >= 1
            assert [s.study_name for s in storage.get_all_studies()] == [STUDY]
        finally:
            storage.engine.dispose()
            admin.dispose()
