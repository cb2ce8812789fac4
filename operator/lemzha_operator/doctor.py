"""Preflight: which catalog metrics Prometheus has for a namespace, and which exporter or recording rule provides each.

    python -m lemzha_operator.doctor --prometheus URL --namespace NS [--at TIME] [--lookback 10m]

In the operator's pod the URL, token and CA default to its own settings:

    kubectl -n lemzha exec deploy/lemzha -- python -m lemzha_operator.doctor --namespace ts

Per catalog metric: present (with its number of pods) or absent over the lookback before --at, the series the
operator reads, and what provides it. For an absent `lemzha:*` metric it says whether the recording rule is missing
(its inputs are there) or which input is, and for the latency metrics which mesh's series exist. Exit status: 0 when
every metric is present, 1 when some are absent, 2 on an error (unreachable Prometheus, bad arguments).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lemzha.binning import as_utc, rfc3339
from lemzha.catalog import CATALOG, LATENCY_SOURCES, Exporter, ExporterSeries, MetricSpec, promql_escape
from lemzha.recording_rules import MESH_GROUP, NODE_GROUP, Rule, kubernetes_rules, per_node
from lemzha_operator.prometheus import PrometheusQueryError, PrometheusUnavailable, query_instant, server_bin_range
from lemzha_operator.prometheus import server_version as read_version

EXPORTER_NAMES = {Exporter.CADVISOR: "cAdvisor", Exporter.KUBE_STATE_METRICS: "kube-state-metrics",
                  Exporter.NODE_EXPORTER: "node-exporter", Exporter.MESH: "mesh", Exporter.TRACES: "traces"}


@dataclass(frozen=True)
class Finding:
    metric: str
    pods: int  # pods with a sample in the lookback; 0 = absent
    series: str  # what the operator reads
    provider: str  # the exporter, or the recording rule and its exporters
    note: str = ""  # for an absent metric: what is missing

    @property
    def present(self) -> bool:
        return self.pods > 0


@dataclass(frozen=True)
class Report:
    version: str | None
    bin_range: str
    namespace: str
    at: datetime
    lookback: str
    findings: tuple[Finding, ...]
    latency_sources: tuple[str, ...]  # sources with series in the namespace

    @property
    def absent(self) -> tuple[str, ...]:
        return tuple(f.metric for f in self.findings if not f.present)


class Doctor:
    """Presence queries (instant, at `at`, over `lookback`) against one Prometheus."""

    def __init__(self, prom, namespace: str, at: datetime, lookback: str, timeout: float) -> None:
        self.prom, self.namespace, self.lookback, self.timeout = prom, namespace, lookback, timeout
        self.at_s = at.timestamp()

    def count(self, expr: str) -> int:
        """`count(expr)` at `at` (0 when there is nothing to count)."""
        result = query_instant(self.prom, f"count({expr})", self.at_s, self.timeout)
        return int(float(result[0]["value"][1])) if result else 0

    def pods(self, selector: str) -> int:
        """Pods with a sample of `selector` in the lookback."""
        return self.count(f"count by (pod) (last_over_time({selector}[{self.lookback}]))")

    def has(self, series: ExporterSeries, extra: str = "") -> bool:
        matchers = [extra] if extra else []
        if series.namespace_label is not None:
            matchers.append(f'{series.namespace_label}="{promql_escape(self.namespace)}"')
        return self.count(f"last_over_time({series.selector(','.join(matchers))}[{self.lookback}])") > 0


def _exporters(exporters) -> str:
    return " + ".join(EXPORTER_NAMES[e] for e in exporters)


def _rule_provider(rule: Rule) -> str:
    return f"rule {rule.group} ({_exporters(dict.fromkeys(s.exporter for s in rule.inputs))})"


def _kubernetes_finding(doctor: Doctor, spec: MetricSpec, pods: int, rule: Rule) -> Finding:
    series = spec.replay.series
    if pods:
        return Finding(spec.name, pods, series, _rule_provider(rule))
    missing = [f"{s.selector()} ({EXPORTER_NAMES[s.exporter]})" for s in rule.inputs if not doctor.has(s)]
    if missing:
        note = f"input absent: {', '.join(missing)}"
    elif rule.group == NODE_GROUP and not doctor.count(per_node(rule.inputs[0].selector())):
        note = ("node-exporter's series find no node: scrape it as a pod, so that its namespace and pod labels "
                "meet its kube_pod_info")
    else:
        note = ("recording rule not loaded, its inputs are there: install the chart's rules (prometheusRule.enabled, "
                "or the ConfigMap's kubernetes.yaml in rule_files)")
    return Finding(spec.name, 0, series, _rule_provider(rule), note)


def _mesh_finding(spec: MetricSpec, pods: int, found: tuple[str, ...]) -> Finding:
    series = spec.replay.series
    sources = found or tuple(s.name for s in LATENCY_SOURCES)
    provider = f"rule {MESH_GROUP} ({' or '.join(sources)})"
    if pods:
        return Finding(spec.name, pods, series, provider)
    if found:
        note = (f"recording rule not loaded; {' and '.join(found)} series are there: set "
                f"recordingRules.latencySource={found[0]}")
    else:
        histograms = ", ".join(s.buckets.name for s in LATENCY_SOURCES)
        note = f"no latency source: none of {histograms} has series for this namespace"
    return Finding(spec.name, 0, series, provider, note)


def diagnose(prom, namespace: str, at: datetime, lookback: str = "10m", timeout: float = 30.0) -> Report:
    """What Prometheus has for `namespace` over `lookback` before `at`, per catalog metric."""
    doctor = Doctor(prom, namespace, at, lookback, timeout)
    version = read_version(prom, timeout)
    found = tuple(s.name for s in LATENCY_SOURCES
                  if doctor.has(s.buckets, s.server) or doctor.has(s.buckets, s.client))
    kubernetes = {r.metric: r for r in kubernetes_rules()}
    findings = []
    for spec in CATALOG:
        pods = doctor.pods(spec.selector(namespace))
        if spec.name in kubernetes:
            findings.append(_kubernetes_finding(doctor, spec, pods, kubernetes[spec.name]))
        elif spec.recorded:
            findings.append(_mesh_finding(spec, pods, found))
        else:
            findings.append(Finding(spec.name, pods, spec.replay.series, _exporters(spec.sources),
                                    "" if pods else f"no {spec.replay.series} series for this namespace"))
    return Report(version, server_bin_range(prom, timeout=timeout), namespace, at, lookback, tuple(findings), found)


def format_report(report: Report, url: str) -> str:
    version = report.version or "unknown (no buildinfo; 2.x range handling assumed)"
    lines = [f"Prometheus {version} at {url}: one bin is [{report.bin_range}]",
             f"namespace {report.namespace}, series seen in the {report.lookback} before {rfc3339(report.at)}", ""]
    widths = (max(len(f.metric) for f in report.findings), max(len(f.series) for f in report.findings))
    header = f"{'metric':<{widths[0]}}  status   pods  {'reads':<{widths[1]}}  provided by"
    lines += [header, "-" * len(header)]
    why: dict[str, list[str]] = {}
    for f in report.findings:
        status = "present" if f.present else "ABSENT"
        pods = str(f.pods) if f.present else "-"
        lines.append(f"{f.metric:<{widths[0]}}  {status:<7}  {pods:>4}  {f.series:<{widths[1]}}  {f.provider}")
        if f.note:
            why.setdefault(f.note, []).append(f.metric)
    absent = report.absent
    lines.append("")
    lines.append(f"{len(report.findings) - len(absent)} of {len(report.findings)} catalog metrics present"
                 + ("; absent:" if absent else ""))
    lines += [f"- {', '.join(metrics)}: {note}" for note, metrics in why.items()]
    if len(absent) == len(report.findings):
        lines.append(f"nothing at all for namespace {report.namespace!r} in that time: check the namespace and --at")
    return "\n".join(lines)


def _at(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        return as_utc(text)
    except ValueError:
        raise ValueError(f"--at {text!r} is not a time; give RFC 3339, e.g. 2023-01-29T09:30:00Z") from None


def _connection(url: str, token_file: Path | None, ca_bundle: Path | None):
    from lemzha_operator.settings import Settings
    from lemzha_operator.sources import prometheus_client_for

    for name, path in (("--token-file", token_file), ("--ca-bundle", ca_bundle)):
        if path is not None and not path.is_file():
            raise ValueError(f"{name} {path} is not a file")
    from urllib3.util.retry import Retry

    # no retries: a preflight says at once that the server cannot be reached
    return prometheus_client_for(Settings(prometheus_url=url, loki_url=None, bundle_dir=None, cache_dir=Path("/tmp"),
                                prometheus_token_file=token_file, ca_bundle=ca_bundle), retry=Retry(total=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lemzha_operator.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ
    parser.add_argument("--prometheus", default=env.get("LEMZHA_PROMETHEUS_URL"),
                        help="Prometheus base URL (default: $LEMZHA_PROMETHEUS_URL)")
    parser.add_argument("--namespace", required=True, help="the namespace whose pods the operator analyses")
    parser.add_argument("--at", help="RFC 3339 time to look back from (default: now)")
    parser.add_argument("--lookback", default="10m", help="how far back a series counts as present (default 10m)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--token-file", type=Path, default=env.get("LEMZHA_PROMETHEUS_TOKEN_FILE") or None,
                        help="bearer token file (default: $LEMZHA_PROMETHEUS_TOKEN_FILE)")
    parser.add_argument("--ca-bundle", type=Path, default=env.get("LEMZHA_CA_BUNDLE") or None,
                        help="CA bundle file (default: $LEMZHA_CA_BUNDLE)")
    args = parser.parse_args(argv)
    try:
        if not args.prometheus:
            raise ValueError("--prometheus is required (or set LEMZHA_PROMETHEUS_URL)")
        if not args.prometheus.startswith(("http://", "https://")):
            raise ValueError(f"--prometheus {args.prometheus!r} is not an http(s) URL")
        if not args.namespace.strip():
            raise ValueError("--namespace is empty")
        if not re.fullmatch(r"[0-9]+(ms|s|m|h|d)", args.lookback):
            raise ValueError(f"--lookback {args.lookback!r} is not a Prometheus duration such as 10m")
        at = _at(args.at)
        prom = _connection(args.prometheus, args.token_file, args.ca_bundle)
        report = diagnose(prom, args.namespace, at, args.lookback, args.timeout)
    except (ValueError, PrometheusUnavailable, PrometheusQueryError) as err:
        denied = isinstance(err, PrometheusQueryError) and re.search(r": 40[13] ", str(err))
        hint = " (does it need a bearer token? --token-file)" if denied else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    print(format_report(report, args.prometheus.rstrip("/")))
    return 1 if report.absent else 0


if __name__ == "__main__":
    raise SystemExit(main())
