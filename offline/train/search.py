"""`python -m offline.search`: nested hyper-parameter search (Optuna TPE + median pruning).

`--fold DAY` searches for one outer leave-one-day-out fold: the scenarios of DAY are filtered out of the prepared
index before anything is loaded, so the held-out day is never read. The objective is the inner-validation MRR of
`offline.train.model_cv.select_epochs` on the remaining days: each training Nezha day is held out in turn (whole
days, never a random split), the model is trained on the rest plus the LEMMA incidents, and the epoch with the best
mean inner MRR is picked. The result is `<out>/fold-DAY.json`, which `python -m offline.lodocv --params <out>` uses
for that fold.

`--all-days` runs the same inner leave-one-day-out over all four Nezha days. Its result, `<out>/all-days.json`,
is for the shipped bundle only: it has seen every day, so it must never be scored by lodocv.

Studies live in `--storage` (default `sqlite:///<cache>/optuna.db`), so an interrupted or repeated search resumes
and adds trials; several workers may share one study through the same sqlite file on one machine, or through a
`postgresql://` URL across machines (driver: `pip install -e '.[postgres]'`, psycopg 3). Give each worker its own
--seed. A running trial records a heartbeat every --heartbeat seconds; when a worker dies, its trial is marked failed
by the next trial any worker starts after 5 silent heartbeats, and its parameters are queued to be tried again once.
`<out>/SEARCH.md` keeps a section per study.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import optuna
import torch

from lemzha.scenario import Scenario
from lemzha.text import TextEmbedder, service_name_text
from offline.cli import run_cli
from offline.data.cli import add_data_arguments, prepared_from_args
from offline.data.dataset import Prepared
from offline.data.store import default_cache_dir
from offline.errors import DataError
from offline.train.folds import day_of
from offline.train.model import ModelConfig
from offline.train.model_cv import select_epochs
from offline.train.params import DEFAULT_PARAMS, load_params
from offline.train.train import InputOptions, PreparedCache, TrainParams

DEFAULT_OUT = DEFAULT_PARAMS.parent
DEFAULT_TRIALS = 40
DEFAULT_HEARTBEAT = 60  # seconds between a running trial's heartbeats
STALE_HEARTBEATS = 5  # heartbeats missed before a running trial counts as dead
MARK = "<!-- study:{} -->"
END = "<!-- end:{} -->"


@dataclass(frozen=True)
class Dim:
    """One searched hyper-parameter: `section` is "model" (ModelConfig) or "train" (TrainParams)."""

    section: str
    name: str
    kind: str  # "choice", "uniform" or "log"
    values: tuple  # the choices, or (low, high)

    def suggest(self, trial: optuna.Trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        low, high = self.values
        return trial.suggest_float(self.name, low, high, log=self.kind == "log")


# Sized for 2 CPU cores: every d_model is divisible by every n_heads, every crop fits max_bins.
SPACE: tuple[Dim, ...] = (
    Dim("model", "d_model", "choice", (32, 48, 64)),
    Dim("model", "n_heads", "choice", (2, 4)),
    Dim("model", "n_layers", "choice", (1, 2)),
    Dim("model", "d_fusion", "choice", (32, 64)),
    Dim("model", "dropout", "uniform", (0.0, 0.3)),
    Dim("model", "temperature", "uniform", (0.05, 0.3)),
    Dim("train", "lr", "log", (5e-4, 5e-3)),
    Dim("train", "weight_decay", "log", (1e-4, 5e-2)),
    Dim("train", "crop_bins", "choice", (16, 20, 24)),
    Dim("train", "noise_std", "uniform", (0.0, 0.1)),
    Dim("train", "bin_mask_prob", "uniform", (0.0, 0.2)),
    Dim("train", "cadvisor_only_prob", "uniform", (0.0, 0.4)),
)

# `--tiny`: a smoke test of the whole pipeline in about a minute, never a result to ship.
TINY_SPACE: tuple[Dim, ...] = (
    Dim("model", "d_model", "choice", (16,)),
    Dim("model", "n_heads", "choice", (2,)),
    Dim("model", "n_layers", "choice", (1,)),
    Dim("model", "d_fusion", "choice", (16,)),
    Dim("train", "lr", "log", (1e-3, 5e-3)),
    Dim("train", "crop_bins", "choice", (16,)),
)


@dataclass
class SearchSettings:
    """What one `python -m offline.search` invocation does; `held_out=None` means --all-days."""

    held_out: str | None
    trials: int | None = DEFAULT_TRIALS
    timeout: float | None = None
    storage: str | None = None  # None: sqlite:///<cache>/optuna.db
    study_name: str | None = None
    out: Path = DEFAULT_OUT
    max_epochs: int = 30
    seed: int = 0
    space: tuple[Dim, ...] = SPACE
    base: Path = DEFAULT_PARAMS  # fixed values of everything not searched
    context: dict = field(default_factory=dict)  # data settings that change the objective (the window)
    command: str = ""
    progress: bool = True
    heartbeat: int = DEFAULT_HEARTBEAT


def allowed_entries(index: dict, held_out: str | None) -> list[dict]:
    """Index entries a search may read: every LEMMA incident, and every Nezha scenario not of the held-out day."""
    return [e for e in index["scenarios"] if e["dataset"] != "nezha" or e["day"] != held_out]


def nezha_days(index: dict) -> list[str]:
    return sorted({e["day"] for e in index["scenarios"] if e["dataset"] == "nezha"})


def load_allowed(prepared: Prepared, held_out: str | None) -> list[Scenario]:
    """Load only the allowed scenarios: the held-out day is filtered out of the index before any file is opened."""
    scenarios = [prepared.load(e["id"]) for e in allowed_entries(prepared.index, held_out)]
    leaked = [s.id for s in scenarios if s.dataset == "nezha" and day_of(s) == held_out]
    if leaked:  # the index day and the label day disagree: refuse rather than search on the test day
        raise DataError(f"scenarios {leaked[:3]} belong to the held-out day {held_out} but the index says otherwise")
    return scenarios


def trial_params(values: dict, space: Sequence[Dim], base_config: ModelConfig, base_params: TrainParams,
                 epochs: int) -> tuple[ModelConfig, TrainParams]:
    """The base params with a trial's values (Optuna param name -> value) and `epochs` put in."""
    sections: dict[str, dict] = {"model": {}, "train": {}}
    for dim in space:
        if dim.name in values:
            sections[dim.section][dim.name] = values[dim.name]
    return replace(base_config, **sections["model"]), replace(base_params, **sections["train"], epochs=epochs)


def space_hash(space: Sequence[Dim], base_config: ModelConfig, base_params: TrainParams, max_epochs: int,
               context: dict) -> str:
    """Everything that changes the objective: two searches with the same hash may share a study."""
    blob = json.dumps({"space": [[d.section, d.name, d.kind, list(d.values)] for d in space],
                       "model": base_config.to_json(), "train": {**base_params.to_json(), "epochs": max_epochs},
                       "context": context}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def check_space(space: Sequence[Dim], base_config: ModelConfig) -> None:
    names = [d.name for d in space]
    known = {"model": {f.name for f in fields(ModelConfig)}, "train": {f.name for f in fields(TrainParams)}}
    bad = [d.name for d in space if d.section not in known or d.name not in known[d.section] or d.name == "epochs"]
    if bad or len(set(names)) != len(names):
        raise DataError(f"bad search space: unknown or repeated parameters {bad or names}")
    values = {d.name: d.values for d in space}
    d_models, heads = values.get("d_model", (base_config.d_model,)), values.get("n_heads", (base_config.n_heads,))
    if any(dm % h for dm in d_models for h in heads):
        raise DataError("bad search space: some d_model is not divisible by some n_heads")


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage whose running trials beat every `heartbeat` seconds; a trial silent for
    STALE_HEARTBEATS beats is failed by the next trial started on the study, and retried once. A malformed or
    unreachable URL is a one-line DataError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if heartbeat < 1:
        raise DataError("--heartbeat must be at least 1 second")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DataError(f"bad --storage {url!r}: expected an SQLAlchemy URL such as sqlite:///path/optuna.db "
                        "or postgresql://user@host/db") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername == "postgresql":
        # the driver the `postgres` extra installs; SQLAlchemy before 2.1 would pick psycopg2 for a bare postgresql://
        parsed = parsed.set(drivername="postgresql+psycopg")
    # a database server on another machine may drop a pooled connection while a trial trains (a restart, a network
    # idle timeout): test each one before use rather than fail the trial's next write
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DataError(f"bad --storage {shown!r}: an sqlite storage needs a file (sqlite:///path/optuna.db)")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # two searches on one machine may share the file: wait for the other's write instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # heartbeats let another worker fail the trial of a killed one instead of leaving it running
                # forever, and the retry puts its parameters back in the queue so the trial is not lost
                return optuna.storages.RDBStorage(
                    parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat, grace_period=STALE_HEARTBEATS * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except Exception as err:  # drivers raise anything from ImportError to OperationalError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if isinstance(err, ModuleNotFoundError):
                first += " (install the driver: pip install -e '.[postgres]')"
            # searches started together race to create the schema: the losers retry once it exists. PostgreSQL
            # reports the race as "already exists" or as a duplicate key in its own catalog (pg_type).
            if ("already exists" in first or "duplicate key" in first) and attempt < 2:
                time.sleep(1.0 + attempt)
                continue
            raise DataError(f"cannot open --storage {shown!r}: {first}") from None
    raise AssertionError("unreachable")


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@dataclass
class SearchResult:
    study_name: str
    path: Path  # the params file written
    best_value: float
    epochs: int
    complete: int
    pruned: int
    failed: int


def run_search(prepared: Prepared, settings: SearchSettings, embedding_dir: Path | None = None) -> SearchResult:
    """Run (or resume) the study for `settings.held_out`, then write the params file and the SEARCH.md section."""
    days = nezha_days(prepared.index)
    held_out = settings.held_out
    if held_out is not None and held_out not in days:
        raise DataError(f"unknown fold {held_out!r}; the folds are {', '.join(days)}")
    if settings.trials is not None and settings.trials < 1:
        raise DataError("--trials must be at least 1")
    if settings.timeout is not None and settings.timeout <= 0:
        raise DataError("--timeout must be positive seconds")
    if settings.max_epochs < 1:
        raise DataError("--max-epochs must be at least 1")
    base_config, base_params, _ = load_params(settings.base)
    check_space(settings.space, base_config)
    digest = space_hash(settings.space, base_config, base_params, settings.max_epochs, settings.context)
    tag = "all-days" if held_out is None else f"fold-{held_out}"
    study_name = settings.study_name or f"lemzha-{tag}-{digest}"
    storage_url = settings.storage or f"sqlite:///{default_cache_dir() / 'optuna.db'}"
    storage = open_storage(storage_url, settings.heartbeat)
    inner_days = [d for d in days if d != held_out]
    if len(inner_days) < 2:
        raise DataError(f"inner validation needs at least 2 training days, got {inner_days}")

    # the study first: a mismatch fails before any data is loaded
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    known = study.user_attrs.get("space_hash")
    if known is not None and known != digest:
        raise DataError(f"study {study_name!r} was searched over another space or setup ({known} != {digest}); "
                        "pick another --study-name")
    if known is None:
        for key, value in {"space_hash": digest, "held_out": held_out, "inner_days": inner_days,
                           "max_epochs": settings.max_epochs, "context": settings.context}.items():
            study.set_user_attr(key, value)

    train = load_allowed(prepared, held_out)
    if sorted({day_of(s) for s in train if s.dataset == "nezha"}) != inner_days:
        raise DataError(f"the loaded scenarios do not cover the inner days {inner_days}")
    n_lemma = sum(1 for s in train if s.dataset != "nezha")
    print(f"search {study_name}: held-out day {held_out or 'none (all days)'} never read; inner days "
          f"{', '.join(inner_days)} + {n_lemma} LEMMA incidents; storage {redacted(storage_url)}", file=sys.stderr)
    embedder = TextEmbedder(embedding_dir or default_cache_dir() / "embeddings", progress=settings.progress)
    # embed every text once up front (label-free), so trials only read the cache
    embedder.embed(sorted({t for s in train for t in s.logs["template"].tolist()}
                          | {service_name_text(x) for s in train for x in s.services}))
    cache = PreparedCache(embedder)  # crop- and params-independent, so shared by every trial

    # a resumed study gets a fresh sampler stream, or its random start-up trials would repeat the first run's
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials))

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        config, params = trial_params({d.name: d.suggest(trial) for d in settings.space}, settings.space,
                                      base_config, base_params, settings.max_epochs)
        trial.set_user_attr("worker", worker)  # which machine and process ran it, when several share the study

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"running inner MRR {value:.3f} after {step + 1} of {len(inner_days)} days")

        inner = select_epochs(train, params, config, cache, InputOptions(), report)
        trial.set_user_attr("epochs", inner["epochs"])
        trial.set_user_attr("curve", inner["curve"])
        return inner["mrr"]

    try:
        study.optimize(objective, n_trials=settings.trials, timeout=settings.timeout,
                       show_progress_bar=settings.progress)
    except KeyboardInterrupt:
        with contextlib.suppress(DataError):  # still write what the finished trials found, if any, then stop
            write_outputs(study, settings, study_name, held_out, inner_days, n_lemma)
        raise
    return write_outputs(study, settings, study_name, held_out, inner_days, n_lemma)


def write_outputs(study: optuna.Study, settings: SearchSettings, study_name: str, held_out: str | None,
                  inner_days: list[str], n_lemma: int) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    complete = [t for t in trials if t.state == states.COMPLETE]
    pruned = sum(t.state == states.PRUNED for t in trials)
    failed = sum(t.state == states.FAIL for t in trials)
    if not complete:
        raise DataError(f"study {study_name!r}: no trial completed ({pruned} pruned, {failed} failed); "
                        "run more --trials")
    best = max(complete, key=lambda t: (t.value, -t.number))
    base_config, base_params, _ = load_params(settings.base)
    epochs = int(best.user_attrs["epochs"])
    config, params = trial_params(best.params, settings.space, base_config, base_params, epochs)
    name = "all-days.json" if held_out is None else f"fold-{held_out}.json"
    what = ("all four Nezha days: for the shipped bundle, never to be scored by lodocv" if held_out is None
            else f"the outer fold that tests on {held_out}; that day was never read")
    data = {
        "_doc": f"Written by `python -m offline.search` for {what}. Best trial of study {study_name} on inner "
                "leave-one-day-out validation; epochs is the epoch count picked on the inner curve.",
        "_search": {
            "study": study_name,
            "held_out": held_out,
            "inner_days": inner_days,
            "lemma_incidents": n_lemma,
            "best_trial": best.number,
            "best_inner_mrr": round(float(best.value), 4),
            "inner_curve": best.user_attrs.get("curve"),
            "trials_complete": len(complete),
            "trials_pruned": pruned,
            "trials_failed": failed,
            "max_epochs": settings.max_epochs,
            "space_hash": study.user_attrs.get("space_hash"),
            "context": settings.context,
            "command": settings.command,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "model": config.to_json(),
        "train": params.to_json(),
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    path = settings.out / name
    atomic_write(path, json.dumps(data, indent=2) + "\n", check=load_params)
    summary = SearchResult(study_name, path, float(best.value), epochs, len(complete), pruned, failed)
    update_search_md(settings.out / "SEARCH.md", study_name,
                     render_section(study_name, held_out, inner_days, n_lemma, complete, summary, settings))
    return summary


def atomic_write(path: Path, text: str, check: Callable[[Path], object] | None = None) -> None:
    """Write beside `path` and rename into place; `check(tmp)` may refuse the content first."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def render_section(study_name: str, held_out: str | None, inner_days: list[str], n_lemma: int,
                   complete: list[optuna.trial.FrozenTrial], summary: SearchResult, settings: SearchSettings) -> str:
    names = [d.name for d in settings.space]
    top = sorted(complete, key=lambda t: (-t.value, t.number))[:5]
    lines = [
        MARK.format(study_name),
        f"## {study_name}",
        "",
        f"- held-out day: {held_out + ' (never read)' if held_out else 'none: all days, for the shipped bundle'}",
        f"- inner days: {', '.join(inner_days)}; {n_lemma} LEMMA incidents always in training",
        f"- trials: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} failed; "
        f"max epochs {settings.max_epochs}",
        f"- best inner MRR: {summary.best_value:.4f} ({summary.epochs} epochs) -> `{summary.path.name}`",
        f"- updated: {datetime.now(UTC).isoformat(timespec='seconds')}",
        "",
        "| trial | inner MRR | epochs | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for t in top:
        cells = [_fmt(t.params.get(n)) for n in names]
        lines.append(f"| {t.number} | {t.value:.4f} | {t.user_attrs.get('epochs')} | " + " | ".join(cells) + " |")
    lines.append(END.format(study_name))
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def update_search_md(path: Path, study_name: str, section: str) -> None:
    """Replace this study's section (or append it), under a lock so concurrent workers do not drop each other's."""
    header = ("# Hyper-parameter searches\n\nWritten by `python -m offline.search`: one section per Optuna study, "
              "updated whenever a search of that study ends. Values are inner leave-one-day-out MRRs on the "
              "training days only.\n\n")
    lock = os.open(path.parent, os.O_RDONLY)  # lock the directory: a lock file would litter offline/params
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else header
        pattern = re.compile(re.escape(MARK.format(study_name)) + r".*?" + re.escape(END.format(study_name)) + r"\n?",
                             re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: section, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        atomic_write(path, text)
    finally:
        os.close(lock)  # releases the lock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--fold", metavar="YYYY-MM-DD", help="search for the outer fold testing on this day")
    which.add_argument("--all-days", action="store_true",
                       help="search on all days: params for the shipped bundle, never for evaluation")
    parser.add_argument("--trials", type=int, help=f"trials to run in this invocation (default {DEFAULT_TRIALS}, "
                        "or unlimited when --timeout is given)")
    parser.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<cache>/optuna.db); "
                        "postgresql://… lets several workers share a study")
    parser.add_argument("--study-name", help="default lemzha-<fold-DAY|all-days>-<hash of space and setup>")
    parser.add_argument("--out", type=Path, help="where fold-DAY.json / all-days.json and SEARCH.md go "
                        "(default offline/params; runs/search-tiny with --tiny)")
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs per inner fit; the inner curve picks "
                        "the number used (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed; give parallel workers different seeds")
    parser.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT,
                        help=f"seconds between a running trial's heartbeats (default {DEFAULT_HEARTBEAT}); a trial "
                        f"silent for {STALE_HEARTBEATS} of them (a killed worker's) is failed and retried once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny model space; not a result to ship")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    trials = args.trials if args.trials is not None or args.timeout is not None else DEFAULT_TRIALS
    cache_dir = Path(args.cache) if args.cache else default_cache_dir()
    settings = SearchSettings(
        held_out=None if args.all_days else args.fold.strip(),
        trials=trials,
        timeout=args.timeout,
        storage=args.storage or f"sqlite:///{cache_dir / 'optuna.db'}",
        study_name=args.study_name,
        # a smoke test must never overwrite the shipped params
        out=args.out or (Path("runs/search-tiny") if args.tiny else DEFAULT_OUT),
        max_epochs=args.max_epochs,
        seed=args.seed,
        space=TINY_SPACE if args.tiny else SPACE,
        context={"before_min": args.before, "after_min": args.after},
        heartbeat=args.heartbeat,
        command="python -m offline.search " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:])),
    )
    # cheap checks before the (possibly slow) data preparation
    if settings.trials is not None and settings.trials < 1:
        raise DataError("--trials must be at least 1")
    open_storage(settings.storage, settings.heartbeat)
    started = time.perf_counter()
    prepared = prepared_from_args(args)
    result = run_search(prepared, settings, cache_dir / "embeddings")
    print(f"best inner MRR {result.best_value:.4f} ({result.epochs} epochs) of {result.complete} complete trials "
          f"({result.pruned} pruned, {result.failed} failed) in study {result.study_name}; wrote {result.path} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
