"""`python -m offline.playground` end to end: it starts, one incident completes through kubectl with the printed
lines, and an interrupt leaves no process and no temporary directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offline.bench.playground import READY_LINE, incidents_yaml, paste_lines
from offline.bench.standins.operator_harness import KUBECTL, REPO
from tests.marks import requires_prometheus


def test_the_paste_lines_and_the_manifest(prepared, tmp_path):
    import yaml

    docs = list(yaml.safe_load_all(incidents_yaml(prepared, ("nezha/20230129_05",))))
    assert docs == [{"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
                     "metadata": {"name": "nezha-20230129-05", "namespace": "ts"},
                     "spec": {"targetNamespace": "ts", "faultTime": "2023-01-29T09:21:39Z", "before": "60m",
                              "after": "10m"}}]
    lines = paste_lines(tmp_path / "kubeconfig", tmp_path / "incidents.yaml")
    assert lines[0] == f"export KUBECONFIG={tmp_path / 'kubeconfig'}" and lines[2] == "kubectl get rcai -A -w"


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc: no extra dependency)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@requires_prometheus
@pytest.mark.slow
def test_the_playground_completes_an_incident_and_stops_cleanly(prepared, shipped_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "playground.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "offline.playground", "--ids", "nezha/20230129_05",
                                 "--bundle", str(shipped_bundle)], cwd=REPO, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while READY_LINE not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        time.sleep(0.2)  # the three lines follow the ready line in one write
        lines = out.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if READY_LINE in line)
        export, apply, watch = lines[start + 1:start + 4]
        kubeconfig = export.removeprefix("export KUBECONFIG=")
        root = Path(kubeconfig).parent
        assert apply.startswith("kubectl apply") and watch == "kubectl get rcai -A -w"
        kubectl = [str(KUBECTL), "--kubeconfig", kubeconfig]
        subprocess.run([*kubectl, *apply.split()[1:]], check=True, capture_output=True, timeout=60)
        subprocess.run([*kubectl, "wait", "--for=jsonpath={.status.phase}=Completed", "rcai/nezha-20230129-05",
                        "-n", "ts", "--timeout=180s"], check=True, capture_output=True, timeout=200)
        top = subprocess.run([*kubectl, "get", "rcai", "-A"], check=True, capture_output=True, text=True).stdout
        assert "Completed" in top, top
        children = _children(proc.pid)
        assert children, "the playground started no process"  # Prometheus and the operator
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping" in out.read_text()
    assert not root.exists(), f"{root} left behind"
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], out.read_text()
