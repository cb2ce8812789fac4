"""Dataset store: verify the shipped archives and extract them into a git-ignored cache. Nothing downloads.

Extraction is idempotent and safe against concurrent or interrupted runs: each archive is unpacked into a
temporary directory beside its target, checked, then renamed into place in one step. Members that would land
outside the target (absolute paths, `..`, links) are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lemzha.fsutil import file_lock, file_sha256
from offline.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_ENV = "LEMZHA_DATASETS"
CACHE_ENV = "LEMZHA_CACHE"


@dataclass(frozen=True)
class Archive:
    name: str
    filename: str
    sha256: str
    root: str  # top-level directory inside the archive


ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive("nezha", "nezha.tar.xz", "9ea5887094792c12f5eedb2b6b8714018330ac03a014c561e4426e6f4ffca6d9", "nezha"),
        Archive(
            "nezha-traces",
            "nezha-traces.tar.xz",
            "ba8c2b9d96941d066f2bc18a0a42ea4ab42b382047333a5dcca555294e911471",
            "nezha",
        ),
        Archive(
            "lemzha-k",
            "lemzha-k.tar.xz",
            "7b237cc1acdb5661ee2cc1f8319e8a7006a0858a571081a78b43351c5de5b75d",
            "lemzha-k",
        ),
    )
}


def default_datasets_dir() -> Path:
    return Path(os.environ.get(DATASETS_ENV) or REPO_ROOT.parent / "shared" / "datasets")


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache")


def verify(archive: Archive, datasets_dir: Path) -> Path:
    path = Path(datasets_dir) / archive.filename
    if not Path(datasets_dir).is_dir():
        raise DataError(f"datasets directory not found: {datasets_dir} (set --datasets or ${DATASETS_ENV})")
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    actual = file_sha256(path)
    if actual != archive.sha256:
        raise DataError(f"{path}: sha256 {actual[:12]}… does not match the expected {archive.sha256[:12]}…")
    return path


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    resolved = (target / name).resolve()
    if name.startswith("/") or ".." in Path(name).parts or not resolved.is_relative_to(target.resolve()):
        raise DataError(f"archive member escapes the target directory: {name!r}")
    if member.issym() or member.islnk():
        raise DataError(f"archive member is a link, refused: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive member is not a regular file or directory: {name!r}")


def extract_archive(archive_path: Path, target: Path, marker: dict) -> Path:
    """Unpack `archive_path` so that `target` holds its contents, atomically. Returns `target`.

    A completed extraction leaves `target/.complete` with `marker`; a matching marker means there is nothing to do.
    """
    target = Path(target)
    done = target / ".complete"
    if done.is_file() and _read_json(done) == marker:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            with tarfile.open(archive_path, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, tmp)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{archive_path}: corrupt or unreadable archive ({err})") from None
        (tmp / ".complete").write_text(json.dumps(marker))
        _swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    if target.exists():
        if (target / ".complete").is_file() and _read_json(target / ".complete") == _read_json(tmp / ".complete"):
            return  # a concurrent run finished the same extraction first
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not (target / ".complete").is_file():
            raise


def read_json_file(path: Path | str, what: str) -> object:
    """A JSON file's content; a missing, unreadable or malformed file is a one-line DataError naming `what`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read {what} ({err})") from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_extracted(name: str, datasets_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Verified, extracted root of one archive (e.g. `<cache>/raw/nezha/nezha`)."""
    try:
        archive = ARCHIVES[name]
    except KeyError:
        raise DataError(f"unknown archive {name!r}; known: {', '.join(ARCHIVES)}") from None
    datasets_dir = Path(datasets_dir or default_datasets_dir())
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / "raw" / name
    marker = {"archive": archive.filename, "sha256": archive.sha256}
    done = target / ".complete"
    if done.is_file() and _read_json(done) == marker:
        return target / archive.root
    with file_lock(cache_dir / "raw" / f".{name}.lock"):  # another process may be extracting it right now
        if not (done.is_file() and _read_json(done) == marker):
            extract_archive(verify(archive, datasets_dir), target, marker)
    return target / archive.root


@dataclass(frozen=True)
class Sources:
    """Where the loaders read raw data from."""

    nezha: Path  # a Nezha tree: contains rca_data/
    lemzhak: Path  # the lemzha-k tree: contains core_multimodal_tmp/

    def provenance(self) -> dict:
        return {"nezha": str(self.nezha), "lemzhak": str(self.lemzhak)}


def resolve_sources(
    datasets_dir: Path | None = None, cache_dir: Path | None = None, nezha_source: Path | None = None
) -> Sources:
    """Extract what is needed; `nezha_source` is a user's already-unpacked Nezha tree that replaces the archive."""
    if nezha_source is not None:
        nezha = Path(nezha_source)
        if not (nezha / "rca_data").is_dir():
            raise DataError(f"--source {nezha}: not a Nezha tree (no rca_data/ inside)")
    else:
        nezha = ensure_extracted("nezha", datasets_dir, cache_dir)
    lemzhak = ensure_extracted("lemzha-k", datasets_dir, cache_dir)
    return Sources(nezha=nezha, lemzhak=lemzhak)
