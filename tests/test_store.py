import io
import tarfile
import threading

import pytest

from offline.data.store import ARCHIVES, ensure_extracted, extract_archive, resolve_sources, verify
from offline.errors import DataError


def make_tar(path, members: dict[str, bytes], extra=None):
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            tar.addfile(extra)
    return path


def test_extraction_is_idempotent_and_leaves_no_temp(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", {"root/x.txt": b"hello"})
    target = tmp_path / "cache" / "a"
    extract_archive(archive, target, {"v": 1})
    mtime = (target / "root/x.txt").stat().st_mtime_ns
    extract_archive(archive, target, {"v": 1})  # marker matches: untouched
    assert (target / "root/x.txt").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a"]


def test_interrupted_extraction_is_redone(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", {"root/x.txt": b"hello"})
    target = tmp_path / "cache" / "a"
    target.mkdir(parents=True)
    (target / "partial").write_text("left by a killed run")  # no .complete marker
    extract_archive(archive, target, {"v": 1})
    assert (target / "root/x.txt").read_bytes() == b"hello" and not (target / "partial").exists()


def test_concurrent_extractions_agree(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", {f"root/{i}.txt": b"x" * 1000 for i in range(50)})
    target = tmp_path / "cache" / "a"
    errors = []

    def run():
        try:
            extract_archive(archive, target, {"v": 1})
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list((target / "root").iterdir())) == 50
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "root/../../evil.txt"])
def test_members_escaping_the_target_are_refused(tmp_path, name):
    archive = make_tar(tmp_path / "a.tar.xz", {"root/ok.txt": b"ok", name: b"bad"})
    with pytest.raises(DataError, match="escapes"):
        extract_archive(archive, tmp_path / "cache" / "a", {"v": 1})
    assert not (tmp_path / "cache" / "a").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_members_are_refused(tmp_path):
    link = tarfile.TarInfo("root/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = make_tar(tmp_path / "a.tar.xz", {"root/ok.txt": b"ok"}, extra=link)
    with pytest.raises(DataError, match="link"):
        extract_archive(archive, tmp_path / "cache" / "a", {"v": 1})


def test_corrupt_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "a.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00" + b"garbage" * 100)
    with pytest.raises(DataError, match="corrupt"):
        extract_archive(bad, tmp_path / "cache" / "a", {"v": 1})
    assert not (tmp_path / "cache" / "a").exists()


def test_wrong_checksum_and_missing_paths(tmp_path):
    (tmp_path / "nezha.tar.xz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="sha256"):
        verify(ARCHIVES["nezha"], tmp_path)
    with pytest.raises(DataError, match="not found"):
        verify(ARCHIVES["nezha"], tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown archive"):
        ensure_extracted("nope", tmp_path, tmp_path)
    with pytest.raises(DataError, match="not a Nezha tree"):
        resolve_sources(tmp_path, tmp_path, nezha_source=tmp_path)


def test_real_archives_extract(nezha_root, lemzhak_root):
    assert (nezha_root / "rca_data" / "2023-01-30").is_dir()
    assert (lemzhak_root / "core_multimodal_tmp").is_dir()


def test_source_tree_replaces_the_nezha_archive(nezha_root, tmp_path):
    sources = resolve_sources(cache_dir=tmp_path, nezha_source=nezha_root)
    assert sources.nezha == nezha_root
    assert not (tmp_path / "raw" / "nezha").exists()  # the archive was not extracted again
    assert (sources.lemzhak / "core_multimodal_tmp").is_dir()


def test_file_lock_excludes_another_process_until_released(tmp_path):
    import subprocess
    import sys

    from lemzha.fsutil import file_lock

    lock = tmp_path / "sub" / "x.lock"
    probe = ("import fcntl, sys\nwith open(sys.argv[1], 'a') as f:\n    try:\n        fcntl.flock(f, fcntl.LOCK_EX | "
             "fcntl.LOCK_NB)\n    except BlockingIOError:\n        sys.exit(3)\n")
    with file_lock(lock):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60).returncode == 0
