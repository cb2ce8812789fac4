"""`python -m offline.playground`: try the operator in one command, without a cluster.

It replays faults (by default one per app: TrainTicket nezha/20230129_05 in namespace `ts`, OnlineBoutique
nezha/20220822_03 in `hipster`) into a real Prometheus (`/usr/bin/prometheus`, retention 10 years so the 2022/2023
blocks are kept), starts the Loki stand-in with their logs and the kube stand-in with the CRDs installed, starts the
operator (`kopf run`) with a bundle (the shipped evidence bundle, exported once per code version when `--bundle` is
not given), writes a kubeconfig and one RCAIncident per fault, and prints three lines to paste in another shell.
Ctrl-C (or SIGTERM) stops everything: the operator and Prometheus by their PIDs, the stand-ins' threads, and the
temporary directory is removed.

The stand-ins are the test harness's (`tests/`): the kube stand-in is not a real API server (see its docstring); it
serves the OpenAPI kubectl's validation needs, so a plain `kubectl apply` works.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

DEFAULT_IDS = ("nezha/20230129_05", "nezha/20220822_03")  # one TrainTicket and one OnlineBoutique fault
READY_LINE = "playground ready"  # printed once everything answers (the end-to-end test waits for it)


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def incidents_yaml(prepared, ids: tuple[str, ...]) -> str:
    """One RCAIncident per fault, named after it, with its injection time as faultTime."""
    from lemzha.binning import rfc3339

    docs = []
    for scenario_id in ids:
        case = prepared.load(scenario_id)
        docs.append({"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
                     "metadata": {"name": scenario_id.replace("/", "-").replace("_", "-"),
                                  "namespace": case.namespace},
                     "spec": {"targetNamespace": case.namespace, "faultTime": rfc3339(case.label.injection_time),
                              "before": "60m", "after": "10m"}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def paste_lines(kubeconfig: Path, manifest: Path) -> list[str]:
    return [f"export KUBECONFIG={kubeconfig}",
            f"kubectl apply -f {manifest}",
            "kubectl get rcai -A -w"]


@contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGINT and SIGTERM raise Stop in the main thread, so every context below unwinds in order."""
    def stop(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(s, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args: argparse.Namespace) -> int:
    from offline.bench import replay
    from offline.bench.standins.kube_standin import KubeStandin
    from offline.bench.standins.loki_standin import LokiStandIn
    from offline.bench.standins.operator_harness import OperatorProcess
    from offline.bench.standins.prometheus_server import PROMETHEUS, prometheus_server
    from offline.data.dataset import prepare

    if not PROMETHEUS.is_file():
        print(f"{PROMETHEUS} not found: apt-get install prometheus", file=sys.stderr)
        return 2
    ids = tuple(i.strip() for i in args.ids.split(",") if i.strip())
    with _signals_stop(), ExitStack() as stack:
        try:
            root = Path(tempfile.mkdtemp(prefix="lemzha-playground-"))
            stack.callback(shutil.rmtree, root, True)
            prepared = prepare(progress=False)
            manifest = root / "incidents.yaml"
            manifest.write_text(incidents_yaml(prepared, ids))  # unknown ids fail here, before anything starts
            replay.run(replay.parse_args(["--ids", ",".join(ids), "--prom-data", str(root / "prom-data"),
                                          "--logs", str(root / "logs.jsonl"), "--no-progress"]))
            bundle = args.bundle
            if bundle is None:
                from offline.train.bundle_cache import shipped_bundle

                bundle = shipped_bundle(prepared)
            prom_url = stack.enter_context(prometheus_server(root / "prom-data"))
            loki = stack.enter_context(LokiStandIn())
            loki.load_jsonl(root / "logs.jsonl")
            kube = stack.enter_context(KubeStandin(root / "kubeconfig"))
            kube.emulator.namespaces.update(prepared.load(i).namespace for i in ids)
            operator = OperatorProcess({"KUBECONFIG": str(kube.kubeconfig), "LEMZHA_PROMETHEUS_URL": prom_url,
                                        "LEMZHA_LOKI_URL": loki.url, "LEMZHA_BUNDLE": str(bundle),
                                        "LEMZHA_TEMPLATE_CACHE": str(root / "templates")},
                                       root / "operator.log", root)
            stack.enter_context(operator)
            print(f"Prometheus {prom_url}, Loki stand-in {loki.url}, kube stand-in {kube.url}, "
                  f"operator log {root / 'operator.log'}, bundle {bundle}")
            print(f"{READY_LINE}; paste these in another shell, Ctrl-C here stops everything:")
            print("\n".join(paste_lines(kube.kubeconfig, manifest)), flush=True)
            while operator.proc is not None and operator.proc.poll() is None:
                time.sleep(0.5)
            print(f"the operator exited ({operator.proc.returncode}); its log:\n{operator.tail()}", file=sys.stderr)
            return 1
        except Stop as why:
            print(f"{why}: stopping", flush=True)
            return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m offline.playground", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", default=",".join(DEFAULT_IDS), help="faults to replay, comma-separated")
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: the shipped one, exported if needed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
