"""`python -m offline.bench operator`: the live operator's latency, memory and throughput, printed as figures.

The run: N TrainTicket faults (46 services, with logs) are replayed into a real Prometheus (`python -m
offline.replay`) and the Loki stand-in; the kube stand-in plays the API server; the operator runs as `kopf run` with
a bundle. Incidents are created through the Kubernetes API and polled every 20 ms.

- latency: created -> Completed for each of the N incidents applied ONE AT A TIME, first with an empty template
  cache and a fresh operator (cold), then again under new names (warm); p50 and p95. The N faults are consecutive
  faults of one day in one namespace, so in the cold pass each window shares most of its reference hour with the
  one before (the log chunks kept by `lemzha_operator.logchunks` and the range points kept by
  `prometheus.RangeCache`), and only the first incident reads its whole window; in the warm pass everything is
  kept, so it measures re-analysing known windows;
- stages: mean seconds per pipeline stage, read from the operator's own /metrics histogram for each pass;
- memory: the operator's RSS after the passes, and a breakdown by what is loaded, measured step by step in a fresh
  torch-free process;
- throughput: the N incidents applied AT ONCE at the configured concurrency; incidents per minute from the first
  create to the last Completed;
- CPU: the operator's CPU seconds per incident in each pass (its own process counter), which other jobs on the
  machine do not inflate the way they inflate wall time; the 1-minute load average is printed beside it;
- alerts: the N faults as alerts pushed into a real Alertmanager ONE AT A TIME (startsAt = the end of each fault's
  window, so the window is in when the alert fires), posted by Alertmanager to the operator's webhook through a
  recording relay; the seconds from the post's arrival to Completed, from the push to Completed, Alertmanager's
  own push-to-post delay, and the webhook's own post-to-created time, p50 and p95 (run after cold or warm, the
  template cache is warm).

- memory: `--memory-incidents` (500) more incidents, `--memory-batch` (50) at once, each batch deleted once
  Completed: the operator's RSS after every batch (the memory curve);
- BARO only: the same passes (but memory) with a second operator without a bundle, on the same data in the same run
  (each operator against its own fresh kube stand-in),
  and the bundle operator's CPU per incident over BARO's (`--no-baro` skips it);
- scale: the shipped ranker on a TrainTicket namespace copied 1 to 22 times (46 to 1,012 pods), ms, RSS holding the
  scenario and peak RSS while ranking it per size, each in a fresh process (`offline.bench.ranker.bench_scale`).

`--passes` picks which passes run (default all, in the order cold, warm, burst, alerts, memory, scale).

It uses the stand-ins and harness in `offline/bench/standins/` (kmock and cel-python: the `playground` extra, which
the test extra includes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from offline.bench.ranker import bench_scale
from offline.data.store import REPO_ROOT
from offline.provenance import bench_provenance

TARGETS = {"p95_warm_s": 1.0, "p95_cold_s": 1.5, "cpu_s_per_incident": 0.4, "rss_mib_after_500": 300,
           "per_minute": 120, "alert_post_to_completed_p95_s": 3.0, "scale_1000_pods_ms": 200}
PASSES = ("cold", "warm", "burst", "alerts", "memory", "scale")
ALERTNAME = "LemzhaBench"
STAGES = ("metrics", "pod_info", "logs", "traces", "scenario", "rank")


def _trainticket_ids(prepared, n: int) -> list[str]:
    ids = sorted(prepared.ids_of("nezha", app="trainticket"))
    if n > len(ids):
        raise ValueError(f"--n {n}: only {len(ids)} TrainTicket faults exist")
    return ids[:n]


def _stage_totals(metrics_url: str) -> dict[str, tuple[float, float]]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=10).text):
        for s in family.samples:
            if s.name in ("lemzha_analysis_stage_seconds_sum", "lemzha_analysis_stage_seconds_count"):
                pair = totals.setdefault(s.labels["stage"], [0.0, 0.0])
                pair[0 if s.name.endswith("_sum") else 1] += s.value
            if s.name == "process_resident_memory_bytes":
                totals["__rss__"] = [s.value, 1.0]
            if s.name == "process_cpu_seconds_total":
                totals["__cpu__"] = [s.value, 1.0]
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _stage_means(before: dict, after: dict) -> dict[str, float]:
    means = {}
    for stage in STAGES:
        s0, c0 = before.get(stage, (0.0, 0.0))
        s1, c1 = after.get(stage, (0.0, 0.0))
        if c1 > c0:
            means[stage] = round((s1 - s0) / (c1 - c0), 4)
    return means


def _incident(name: str, namespace: str, fault_time) -> dict:
    return {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targetNamespace": namespace, "faultTime": fault_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "topK": 5}}


def _wait_completed(api, names: list[str], namespace: str, timeout: float) -> dict[str, float]:
    """Monotonic time each incident was first seen Completed (polled every 20 ms)."""
    from lemzha_operator.settings import GROUP, PLURAL, VERSION

    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(names) - len(seen)} incidents not Completed after {timeout:.0f} s")
        listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        now = time.monotonic()
        for obj in listed:
            name, phase = obj["metadata"]["name"], obj.get("status", {}).get("phase")
            if name in names and name not in seen:
                if phase == "Failed":
                    raise RuntimeError(f"{name} Failed: {obj['status'].get('message')}")
                if phase == "Completed":
                    seen[name] = now
        time.sleep(0.02)
    return seen


def _sequential(api, cases: list[tuple[str, object]], namespace: str, prefix: str) -> list[float]:
    from lemzha_operator.settings import GROUP, PLURAL, VERSION

    latencies = []
    for i, (_, fault_time) in enumerate(cases):
        name = f"{prefix}-{i:03d}"
        t0 = time.monotonic()
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _incident(name, namespace, fault_time))
        latencies.append(_wait_completed(api, [name], namespace, 300)[name] - t0)
    return latencies


def _alerts(api, alertmanager: str, relay, cases: list[tuple[str, object, object]], namespace: str) -> dict:
    """Each fault as one alert (startsAt = its window's end), pushed into Alertmanager and awaited before the next."""
    from lemzha_operator.alerts import incident_name, parse_payload
    from offline.bench.standins.alertmanager_server import push_alerts

    post_to_done, push_to_done, push_to_post, post_to_created = [], [], [], []
    stamp = f"{time.time():.0f}"  # a fresh label set per run: fresh fingerprints
    for i, (_, _, window_end) in enumerate(cases):
        key = f"{stamp}-{i:03d}"
        t0 = time.monotonic()
        push_alerts(alertmanager, [{"labels": {"alertname": ALERTNAME, "namespace": namespace, "case": key},
                                    "startsAt": window_end.strftime("%Y-%m-%dT%H:%M:%SZ")}])
        deadline, found = t0 + 60, None
        while found is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Alertmanager did not post alert {key} within 60 s")
            for posted in relay.received():
                for alert in parse_payload(posted.body):
                    if alert.labels.get("case") == key and alert.status == "firing":
                        found = (incident_name(alert), posted, posted.status)
                        break
                if found is not None:
                    break
            time.sleep(0.005)
        name, posted, status = found
        if status != 200:
            raise RuntimeError(f"the webhook answered {status} to alert {key}")
        done = _wait_completed(api, [name], namespace, 300)[name]
        post_to_done.append(done - posted.at)
        push_to_done.append(done - t0)
        push_to_post.append(posted.at - t0)
        post_to_created.append(posted.answered - posted.at)  # the webhook answers once it has created the incident
    return {"post_to_completed": _percentiles(post_to_done), "push_to_completed": _percentiles(push_to_done),
            "alertmanager_push_to_post": _percentiles(push_to_post),
            "webhook_post_to_created": _percentiles(post_to_created)}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"p50_s": round(statistics.median(ordered), 3), "p95_s": round(p95, 3), "max_s": round(ordered[-1], 3)}


RSS_STEPS = r"""
import json, os, sys, tempfile
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = [("python", rss())]
import kopf, kubernetes, prometheus_client, requests  # noqa: E401
steps.append(("kopf + kubernetes client", rss()))
import numpy, pandas, pyarrow  # noqa: E401
import lemzha_operator.main, lemzha_operator.pipeline, lemzha_operator.sources  # noqa: E401
steps.append(("numpy + pandas + pyarrow + lemzha", rss()))
from lemzha.bundle_ranker import open_ranker
ranker = open_ranker(sys.argv[1], cache_dir=tempfile.mkdtemp())
steps.append((f"the bundle's {type(ranker).__name__}", rss()))
if hasattr(ranker, "embedder"):  # a model bundle: its MiniLM template cache
    from lemzha.bundle import TEMPLATES_FILE, read_templates
    ranker.embedder.seed(*read_templates(ranker.bundle.path(TEMPLATES_FILE)))
    steps.append(("bundle templates in the cache", rss()))
from lemzha.scenario_io import load_scenario
ranker.rank(load_scenario(sys.argv[2], with_label=False))
steps.append(("after ranking one TrainTicket incident", rss()))
assert "torch" not in sys.modules
print(json.dumps(steps))
"""


def _rss_breakdown(bundle: Path, scenario_dir: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)])}
    out = subprocess.run([sys.executable, "-c", RSS_STEPS, str(bundle), str(scenario_dir)], capture_output=True,
                         text=True, env=env, cwd=REPO_ROOT, check=True)
    steps = json.loads(out.stdout)
    rows, previous = [], 0.0
    for what, mib in steps:
        rows.append({"step": what, "rss_mib": round(mib, 1), "added_mib": round(mib - previous, 1)})
        previous = mib
    return rows


def _memory_curve(api, cases: list[tuple[str, object]], namespace: str, incidents: int, batch: int,
                  metrics_url: str) -> list[dict]:
    """`incidents` more incidents (the cases again under new names), `batch` applied at once, each batch deleted
    once Completed (as ttlSecondsAfterFinished would): the operator's RSS and CPU seconds after every batch."""
    from lemzha_operator.settings import GROUP, PLURAL, VERSION

    curve, done, k = [], 0, 0
    while done < incidents:
        names = []
        for _ in range(min(batch, incidents - done)):
            name, fault_time = f"mem-{k:04d}", cases[k % len(cases)][1]
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _incident(name, namespace,
                                                                                            fault_time))
            names.append(name)
            k += 1
        _wait_completed(api, names, namespace, 900)
        for name in names:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        done += len(names)
        totals = _stage_totals(metrics_url)
        curve.append({"incidents": done, "rss_mib": round(totals["__rss__"][0] / 2**20, 1),
                      "cpu_s": round(totals["__cpu__"][0], 1)})
    return curve


def _operator_run(env: dict, root: Path, api, cases, alert_cases, namespace: str, passes: tuple[str, ...],
                  prefix: str, progress: bool, memory: tuple[int, int]) -> dict:
    """One operator process through `passes`: latency, stage means, CPU per incident, RSS, throughput."""
    from tqdm import tqdm

    from offline.bench.standins.alertmanager_server import WebhookRelay, alertmanager_server
    from offline.bench.standins.operator_harness import OperatorProcess
    from offline.bench.standins.prometheus_server import free_port

    n = len(cases)
    webhook_port = free_port()
    env = {**env, "LEMZHA_ALERTS_PORT": str(webhook_port)}
    operator_passes = tuple(p for p in passes if p != "scale")
    with OperatorProcess(env, root / f"operator-{prefix}.log", root) as operator, \
            WebhookRelay(f"http://127.0.0.1:{webhook_port}/alerts") as relay:
        bar = tqdm(total=len(operator_passes), desc=f"operator bench ({prefix})", disable=not progress)
        totals = {"start": _stage_totals(operator.metrics_url)}
        latency, burst, curve = {}, None, None
        for name in operator_passes:
            if name in ("cold", "warm"):
                latency[f"{name}_template_cache"] = _percentiles(_sequential(api, cases, namespace,
                                                                             f"{prefix}-{name}"))
            elif name == "burst":
                names = [f"{prefix}-burst-{i:03d}" for i in range(n)]
                t0 = time.monotonic()
                for incident, (_, fault_time) in zip(names, cases, strict=True):
                    api.create_namespaced_custom_object("lemzha.io", "v1alpha1", namespace, "rcaincidents",
                                                        _incident(incident, namespace, fault_time))
                done = _wait_completed(api, names, namespace, 900)
                burst = max(done.values()) - t0
            elif name == "alerts":
                with alertmanager_server(relay.url, repeat_interval="1h") as alertmanager:
                    latency["alerts"] = _alerts(api, alertmanager, relay, alert_cases, namespace)
            else:  # memory
                curve = _memory_curve(api, cases, namespace, memory[0], memory[1], operator.metrics_url)
            totals[name] = _stage_totals(operator.metrics_url)
            bar.update()
        bar.close()
        rss = totals[operator_passes[-1]].get("__rss__", (0.0, 1.0))[0] / 2**20
    previous = ["start", *operator_passes]
    counts = {name: (memory[0] if name == "memory" else n) for name in operator_passes}
    stage_means = {name: _stage_means(totals[previous[k]], totals[name]) for k, name in enumerate(operator_passes)}
    cpu = {name: round((totals[name]["__cpu__"][0] - totals[previous[k]]["__cpu__"][0]) / counts[name], 3)
           for k, name in enumerate(operator_passes)}
    alerts = latency.pop("alerts", None)
    return {
        "latency_created_to_completed": latency,
        # alert pushed into Alertmanager -> posted to the webhook -> incident Completed, one at a time
        **({"latency_alert_to_completed": alerts} if alerts else {}),
        "stage_mean_s": stage_means,
        # CPU seconds the operator process spent per incident: unlike wall time, not inflated by other jobs
        "operator_cpu_s_per_incident": cpu,
        "operator_rss_mib": round(rss, 1),
        **({"throughput": {"incidents": n, "wall_s": round(burst, 2), "per_minute": round(n / burst * 60, 1)}}
           if burst is not None else {}),
        **({"memory_curve": curve} if curve is not None else {}),
    }


def run(n: int, concurrency: int, bundle: Path | None, progress: bool = True, passes: tuple[str, ...] = PASSES,
        baro: bool = True, memory: tuple[int, int] = (500, 50)) -> dict:
    """The figures of an operator with `bundle`, then (`baro`) of one without a bundle (BARO only) on the same
    replayed data in the same run, so the bundle's cost reads as a ratio that machine load does not move."""
    import kubernetes

    from offline.bench import replay
    from offline.bench.standins.alertmanager_server import ALERTMANAGER
    from offline.bench.standins.kube_standin import KubeStandin
    from offline.bench.standins.loki_standin import LokiStandIn
    from offline.bench.standins.prometheus_server import PROMTOOL, prometheus_server
    from offline.data.dataset import prepare

    if not PROMTOOL.is_file():
        raise FileNotFoundError("promtool not installed (apt-get install prometheus)")
    if "alerts" in passes and not ALERTMANAGER.is_file():
        raise FileNotFoundError("Alertmanager not installed (apt-get install prometheus-alertmanager)")
    prepared = prepare(progress=progress)
    ids = _trainticket_ids(prepared, n)
    cases = [(i, prepared.load(i).label.injection_time) for i in ids]
    alert_cases = [(i, t, prepared.load(i).end) for i, t in cases]
    if bundle is None:
        from offline.train.bundle_cache import shipped_bundle

        bundle = shipped_bundle(prepared)
    namespace = prepared.load(ids[0]).namespace
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="lemzha-bench-operator-") as tmp:
        root = Path(tmp)
        argv = ["--ids", ",".join(ids), "--prom-data", str(root / "data"), "--logs", str(root / "logs.jsonl"),
                "--cache-dir", str(prepared.directory.parent.parent)] + ([] if progress else ["--no-progress"])
        if replay.main(argv) != 0:
            raise RuntimeError("offline.replay failed")
        with prometheus_server(root / "data") as prom_url, LokiStandIn() as loki:
            lines = loki.load_jsonl(root / "logs.jsonl")
            env = {"LEMZHA_PROMETHEUS_URL": prom_url, "LEMZHA_LOKI_URL": loki.url,
                   "LEMZHA_TEMPLATE_CACHE": str(root / "templates"),
                   "LEMZHA_CONCURRENCY": str(concurrency), "MALLOC_ARENA_MAX": "2",  # as the chart and image set
                   "LEMZHA_ALERTS_HOST": "127.0.0.1", "LEMZHA_ALERTS_MAX_PER_MINUTE": str(max(10, n))}
            runs = [("bundle", {"LEMZHA_BUNDLE": str(bundle)}, passes)] if any(p != "scale" for p in passes) else []
            baro_passes = tuple(p for p in passes if p not in ("memory", "scale"))
            if runs and baro and baro_passes:  # the memory curve is the bundle's: BARO-only runs the other passes
                runs.append(("baro_only", {}, baro_passes))
            for name, extra, run_passes in runs:
                # a fresh API server per operator: the stand-in slows as the memory pass's objects and Events pile
                # up, which would make the second operator's latencies incomparable with the first's
                with KubeStandin(root / f"kubeconfig-{name}") as kube:
                    config = kubernetes.client.Configuration()
                    kubernetes.config.load_kube_config(str(kube.kubeconfig), client_configuration=config)
                    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
                    figures[name] = _operator_run({**env, **extra, "KUBECONFIG": str(kube.kubeconfig)}, root, api,
                                                  cases, alert_cases, namespace, run_passes, name.split("_")[0],
                                                  progress, memory)
    if "bundle" in figures and "baro_only" in figures:
        figures["bundle_over_baro_cpu"] = {
            name: round(cpu / figures["baro_only"]["operator_cpu_s_per_incident"][name], 2)
            for name, cpu in figures["bundle"]["operator_cpu_s_per_incident"].items()
            if figures["baro_only"]["operator_cpu_s_per_incident"].get(name)}
    return {
        "incidents": n, "scenarios": ids, "namespace": namespace, "bundle": str(bundle), "log_lines_loaded": lines,
        "concurrency": concurrency, "passes": list(passes), **figures,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "rss_breakdown": _rss_breakdown(bundle, prepared.directory / ids[0]),
        **({"scale": bench_scale(bundle)} if "scale" in passes else {}),
        "targets": TARGETS,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m offline.bench operator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="TrainTicket incidents per pass (default 20)")
    parser.add_argument("--concurrency", type=int, default=2, help="LEMZHA_CONCURRENCY (default 2, as shipped)")
    parser.add_argument("--bundle", type=Path,
                        help="bundle directory (default: the shipped evidence bundle, exported once per code version)")
    parser.add_argument("--passes", default=",".join(PASSES),
                        help=f"comma-separated, in this order: {','.join(PASSES)} (default all)")
    parser.add_argument("--no-baro", action="store_true", help="skip the same passes without a bundle (BARO only)")
    parser.add_argument("--memory-incidents", type=int, default=500, help="incidents of the memory pass (default 500)")
    parser.add_argument("--memory-batch", type=int, default=50,
                        help="incidents applied at once in the memory pass; RSS is read after each batch (default 50)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if min(args.n, args.concurrency, args.memory_incidents, args.memory_batch) < 1:
        raise ValueError("--n, --concurrency, --memory-incidents and --memory-batch must be at least 1")
    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    if not passes or any(p not in PASSES for p in passes) or list(passes) != sorted(set(passes), key=PASSES.index):
        raise ValueError(f"--passes {args.passes!r}: give some of {','.join(PASSES)}, once each, in that order")
    if args.bundle is not None and not (args.bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"--bundle {args.bundle}: no bundle.json there")
    figures = run(args.n, args.concurrency, args.bundle, progress=not args.no_progress, passes=passes,
                  baro=not args.no_baro, memory=(args.memory_incidents, args.memory_batch))
    figures["provenance"] = bench_provenance("operator", list(sys.argv[1:] if argv is None else argv))
    text = json.dumps(figures, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    from offline.cli import run_cli

    sys.exit(run_cli(main))
