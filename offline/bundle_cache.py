"""A `--quick` bundle per version of the code and data, cached in `.cache/bundles/<hash>/bundle` with the trained
torch weights beside it (`torch_state.pt`). Tests and the operator benchmark share it; a change to `lemzha/`, the
params or the export code, or to the prepared data, builds a new one."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from offline.store import REPO_ROOT, default_cache_dir

KEEP_SECONDS = 86400  # other versions (~90 MB each) nobody built for a day are removed


def quick_bundle(prepared) -> Path:
    """The bundle directory; `<it>.parent / "torch_state.pt"` holds the torch weights it was exported from."""
    digest = hashlib.sha256(str(prepared.index.get("key")).encode())
    for path in sorted([*REPO_ROOT.glob("lemzha/*.py"), *REPO_ROOT.glob("offline/params/*.json"),
                        REPO_ROOT / "offline" / "export.py", REPO_ROOT / "offline" / "params.py"]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    root = default_cache_dir() / "bundles" / digest.hexdigest()[:16]
    bundle, state = root / "bundle", root / "torch_state.pt"
    if not ((bundle / "bundle.json").is_file() and state.is_file()):
        from offline.export import main as export

        if export(["--quick", "--out", str(bundle), "--torch-state", str(state)]) != 0:
            raise RuntimeError("offline.export --quick failed")
        for old in root.parent.iterdir():
            if old != root and old.stat().st_mtime < time.time() - KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    return bundle
