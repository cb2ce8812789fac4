"""The one metric catalog: every canonical metric, its unit, its sources offline and its PromQL live.

This module is the only place where metric names are mapped. Offline loaders look up the raw Nezha column or the
lemzha-k/LEMMA parquet name here; the operator builds its queries here; the Prometheus replay writes the
series named by each metric's `replay` so that the live query reads back exactly the offline value.

Live values come from the expression evaluated at the *end* of each 30 s bin minus 1 ms, over one bin's range:
Prometheus 2.x ranges include their lower end, so there the range is 29,999 ms and covers [t, t + 30 s - 1 ms];
Prometheus 3 opens the lower end, so there it is 30 s and covers (t - 1 ms, t + 30 s - 1 ms]. Both are exactly the
bin [t, t + 30 s) of `lemzha.binning` at Prometheus' millisecond resolution; `bin_range(version)` picks one from the
server's version (the operator reads /api/v1/status/buildinfo).

Twelve metrics are read as `lemzha:*` series that the chart's recording rules (`lemzha.recording_rules`) compute
from the exporters a cluster runs; `EXPORTER_SERIES` and `LATENCY_SOURCES` below name those exporters' series, and each
metric's `sources` says which exporters it needs (`lemzha.coverage` masks scenarios by them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lemzha.binning import BIN_SECONDS

BIN_RANGE = "29999ms"  # one bin at Prometheus' ms resolution, lower end included (2.x semantics)
RECORDED_PREFIX = "lemzha:"


def bin_range(prometheus_version: str, n_bins: int = 1) -> str:
    """The range selector covering exactly `n_bins` bins, evaluated at their end - 1 ms, on a server of this
    version: 29999ms per bin for Prometheus 2.x (lower end included), 30s from 3.0 (lower end excluded). An
    unparsable version is taken as 2.x."""
    major = prometheus_version.strip().lstrip("v").split(".", 1)[0]
    if major.isdigit() and int(major) >= 3:
        return f"{n_bins * BIN_SECONDS}s"
    return f"{n_bins * BIN_SECONDS * 1000 - 1}ms"


class MetricType(StrEnum):
    """Drives normalisation: bounded percentages are scaled, heavy-tailed magnitudes are log-compressed."""

    PERCENT = "percent"
    BYTES = "bytes"
    BYTE_RATE = "byte_rate"
    SECONDS = "seconds"
    COUNT_RATE = "count_rate"
    MILLICORES = "millicores"


# The smallest spread a traffic, I/O or latency series may have, in catalog units: an idle pod's reference sits at 0
# (no request, no latency), and without a floor one request becomes a z-score of 10^6. Set from the units, not from
# data: 5 ms of latency, one event per 10 s, 1 KiB/s. CPU, memory and percentages keep the relative floor only
# (a 1 millicore floor was tried on all four Nezha days and cost three TrainTicket cases).
RESOLUTION: dict[MetricType, float] = {
    MetricType.SECONDS: 0.005,
    MetricType.COUNT_RATE: 0.1,
    MetricType.BYTE_RATE: 1024.0,
}


class Scope(StrEnum):
    POD = "pod"
    NODE = "node"  # a node-level value copied onto each pod of that node


class Exporter(StrEnum):
    """Who exports the raw series a metric is made from, in a cluster."""

    CADVISOR = "cadvisor"  # the kubelet's cAdvisor: container_* series
    KUBE_STATE_METRICS = "kube-state-metrics"  # resource limits, pod -> node (kube_pod_info), owners, labels
    NODE_EXPORTER = "node-exporter"  # node_* series
    MESH = "mesh"  # per-pod request latency and counts: Istio, Linkerd or OpenTelemetry spanmetrics
    TRACES = "traces"  # the OpenTelemetry spanmetrics and servicegraph series per service (the trace features)


@dataclass(frozen=True)
class Replay:
    """How to write this metric into Prometheus so that `MetricSpec.promql` reads the offline value back.

    `series` is the Prometheus series name, `kind` is "gauge" or "counter" (a counter is written cumulatively so
    that irate() returns the value), and the written value is `offline_value * factor`.
    """

    series: str
    kind: str
    factor: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    unit: str
    scope: Scope
    nezha_column: str | None  # raw Nezha metric CSV column
    lemzhak_name: str | None  # lemzha-k parquet stem (pod_<name>.parquet), Nezha and LEMMA alike
    replay: Replay
    selector_extra: str = ""  # extra label matchers of the live series
    doc: str = ""
    source_factor: float = 1.0  # raw Nezha / lemzha-k value * source_factor = catalog value
    sources: tuple[Exporter, ...] = ()  # every exporter the live value needs

    def __post_init__(self) -> None:
        if self.replay.kind not in ("gauge", "counter"):
            raise ValueError(f"{self.name}: replay kind must be gauge or counter, not {self.replay.kind!r}")
        if not self.sources:
            raise ValueError(f"{self.name}: name the exporters it needs (sources)")

    @property
    def recorded(self) -> bool:
        """Read live as a `lemzha:*` series of the chart's recording rules, not as an exporter's own series."""
        return self.replay.series.startswith(RECORDED_PREFIX)

    def selector(self, namespace: str) -> str:
        """The live series of this metric in `namespace`, as a PromQL selector."""
        matchers = f'namespace="{promql_escape(namespace)}"'
        if self.selector_extra:
            matchers += f",{self.selector_extra}"
        for key, value in self.replay.labels:
            matchers += f',{key}="{value}"'
        return f"{self.replay.series}{{{matchers}}}"

    def promql(self, namespace: str, bin_range: str = BIN_RANGE) -> str:
        """Per-pod expression whose value at time t is the latest sample at or before t (NaN-free: absent if none).
        `bin_range` is one bin on the server's Prometheus version (`bin_range()`)."""
        series = self.selector(namespace)
        factor = _inverse(self.replay.factor)
        if self.replay.kind == "counter":
            # irate over two samples is exact for a counter written cumulatively; `and` keeps only pods that
            # have a sample inside the bin, so an empty bin stays empty instead of repeating the previous rate.
            expr = f"sum by (pod) (irate({series}[2m]) and last_over_time({series}[{bin_range}]))"
        else:
            expr = f"sum by (pod) (last_over_time({series}[{bin_range}]))"
        return expr if factor == 1.0 else f"({expr}) * {factor!r}"


def promql_escape(value: str) -> str:
    """A value for a PromQL label matcher in double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _inverse(factor: float) -> float:
    return 1.0 if factor == 1.0 else 1.0 / factor


_CADVISOR = 'container!="",container!="POD"'
MIB = 1024.0 * 1024.0


# -- exporter series -----------------------------------------------------------------------------------------------
# The raw series a standard cluster has, from which the chart's recording rules (`lemzha.recording_rules`) compute the
# `lemzha:*` series above. Names and label conventions are those of the exporters' defaults:
# - cAdvisor (the kubelet's /metrics/cadvisor), scraped with `namespace`, `pod` and `container` labels;
# - kube-state-metrics v2: `kube_pod_container_resource_limits{resource, unit}` and `kube_pod_info{node}`;
# - node-exporter, scraped as a pod (`namespace`, `pod` target labels of its own pod), so its node comes from its
#   pod's `kube_pod_info` (the kube-prometheus convention), whatever `instance` holds;
# - the mesh or tracing pipeline chosen as the latency source (`LATENCY_SOURCES`).


@dataclass(frozen=True)
class ExporterSeries:
    """One raw series (family) an exporter writes, with the matchers that select what the rules read."""

    name: str
    exporter: Exporter
    matchers: str = ""
    namespace_label: str | None = "namespace"  # the label holding the workload's namespace; None: not namespaced

    def selector(self, extra: str = "") -> str:
        matchers = ",".join(m for m in (self.matchers, extra) if m)
        return f"{self.name}{{{matchers}}}" if matchers else self.name


CADVISOR_CPU = ExporterSeries("container_cpu_usage_seconds_total", Exporter.CADVISOR, _CADVISOR)
CADVISOR_MEMORY = ExporterSeries("container_memory_working_set_bytes", Exporter.CADVISOR, _CADVISOR)
KSM_CPU_LIMIT = ExporterSeries("kube_pod_container_resource_limits", Exporter.KUBE_STATE_METRICS,
                               'resource="cpu",unit="core"')
KSM_MEMORY_LIMIT = ExporterSeries("kube_pod_container_resource_limits", Exporter.KUBE_STATE_METRICS,
                                  'resource="memory",unit="byte"')
KSM_POD_INFO = ExporterSeries("kube_pod_info", Exporter.KUBE_STATE_METRICS, 'node!=""')
NODE_CPU_IDLE = ExporterSeries("node_cpu_seconds_total", Exporter.NODE_EXPORTER, 'mode="idle"', None)
NODE_MEMORY_AVAILABLE = ExporterSeries("node_memory_MemAvailable_bytes", Exporter.NODE_EXPORTER, "", None)
NODE_MEMORY_TOTAL = ExporterSeries("node_memory_MemTotal_bytes", Exporter.NODE_EXPORTER, "", None)
# physical interfaces only: loopback and the virtual devices of container networking would count a pod's traffic twice
NODE_NETWORK_RECEIVE = ExporterSeries(
    "node_network_receive_bytes_total", Exporter.NODE_EXPORTER,
    'device!~"lo|veth.*|cali.*|cilium.*|lxc.*|flannel.*|cni.*|docker.*|br-.*|virbr.*|tunl.*|vxlan.*|[a-f0-9]{15}"',
    None)
EXPORTER_SERIES: tuple[ExporterSeries, ...] = (
    CADVISOR_CPU, CADVISOR_MEMORY, KSM_CPU_LIMIT, KSM_MEMORY_LIMIT, KSM_POD_INFO, NODE_CPU_IDLE,
    NODE_MEMORY_AVAILABLE, NODE_MEMORY_TOTAL, NODE_NETWORK_RECEIVE,
)

_CADVISOR_ONLY = (Exporter.CADVISOR,)
_WITH_LIMITS = (Exporter.CADVISOR, Exporter.KUBE_STATE_METRICS)
_NODE = (Exporter.NODE_EXPORTER, Exporter.KUBE_STATE_METRICS)
_MESH = (Exporter.MESH,)

CATALOG: tuple[MetricSpec, ...] = (
    MetricSpec(
        "cpu_millicores", MetricType.MILLICORES, "millicores", Scope.POD, "CpuUsage(m)", "cpu_usage_m",
        Replay(CADVISOR_CPU.name, "counter", 1e-3), _CADVISOR,
        "CPU time used per second, in thousandths of a core.", sources=_CADVISOR_ONLY,
    ),
    MetricSpec(
        "cpu_percent", MetricType.PERCENT, "%", Scope.POD, "CpuUsageRate(%)", "cpu_usage_rate",
        Replay("lemzha:pod_cpu_usage:percent", "gauge", 1.0),
        doc="CPU use as a share of the pod's CPU limit (recording rule in the Helm chart).", sources=_WITH_LIMITS,
    ),
    MetricSpec(
        "memory_bytes", MetricType.BYTES, "bytes", Scope.POD, "MemoryUsage(Mi)", "memory_usage",
        Replay(CADVISOR_MEMORY.name, "gauge", 1.0), _CADVISOR,
        "Working-set memory in bytes (Nezha reports MiB).", source_factor=MIB, sources=_CADVISOR_ONLY,
    ),
    MetricSpec(
        "memory_percent", MetricType.PERCENT, "%", Scope.POD, "MemoryUsageRate(%)", "memory_usage_rate",
        Replay("lemzha:pod_memory_usage:percent", "gauge", 1.0),
        doc="Working set as a share of the memory limit (recording rule).", sources=_WITH_LIMITS,
    ),
    MetricSpec(
        "syscall_read", MetricType.COUNT_RATE, "ops/s", Scope.POD, "SyscallRead", "syscall_read",
        Replay("container_fs_reads_total", "counter", 1.0), _CADVISOR,
        "Read operations per second. Nezha counts read syscalls; live, cAdvisor's filesystem reads are the nearest.",
        sources=_CADVISOR_ONLY,
    ),
    MetricSpec(
        "syscall_write", MetricType.COUNT_RATE, "ops/s", Scope.POD, "SyscallWrite", "syscall_write",
        Replay("container_fs_writes_total", "counter", 1.0), _CADVISOR,
        "Write operations, as syscall_read.", sources=_CADVISOR_ONLY,
    ),
    MetricSpec(
        "network_receive", MetricType.BYTE_RATE, "bytes/s", Scope.POD, "NetworkReceiveBytes", "network_rx_bytes",
        Replay("container_network_receive_bytes_total", "counter", 1.0),
        doc="Bytes received per second by the pod's network namespace.", sources=_CADVISOR_ONLY,
    ),
    MetricSpec(
        "network_transmit", MetricType.BYTE_RATE, "bytes/s", Scope.POD, "NetworkTransmitBytes", "network_tx_bytes",
        Replay("container_network_transmit_bytes_total", "counter", 1.0),
        doc="Bytes sent per second.", sources=_CADVISOR_ONLY,
    ),
    *(
        MetricSpec(
            f"latency_{side}_p{q}", MetricType.SECONDS, "s", Scope.POD,
            f"Pod{side.title()}LatencyP{q}(s)", f"latency_{side}_p{q}",
            Replay(f"lemzha:pod_{side}_latency_p{q}:seconds", "gauge", 1.0),
            doc=f"P{q} of request latency seen as {side} (recording rule over the mesh's request-duration histogram).",
            sources=_MESH,
        )
        for side in ("client", "server")
        for q in (90, 95, 99)
    ),
    MetricSpec(
        "workload", MetricType.COUNT_RATE, "req/s", Scope.POD, "PodWorkload(Ops)", "workload_ops",
        Replay("lemzha:pod_requests:rate", "gauge", 1.0),
        doc="Requests served per second (recording rule over the mesh's request counter).", sources=_MESH,
    ),
    MetricSpec(
        "node_cpu_percent", MetricType.PERCENT, "%", Scope.NODE, "NodeCpuUsageRate(%)", "node_cpu_usage_rate",
        Replay("lemzha:pod_node_cpu_usage:percent", "gauge", 1.0),
        doc="CPU use of the pod's node (recording rule joining node-exporter to kube_pod_info).", sources=_NODE,
    ),
    MetricSpec(
        "node_memory_percent", MetricType.PERCENT, "%", Scope.NODE, "NodeMemoryUsageRate(%)", "node_memory_usage_rate",
        Replay("lemzha:pod_node_memory_usage:percent", "gauge", 1.0),
        doc="Memory use of the pod's node.", sources=_NODE,
    ),
    MetricSpec(
        "node_network_receive", MetricType.BYTE_RATE, "bytes/s", Scope.NODE, "NodeNetworkReceiveBytes",
        "node_network_rx_bytes", Replay("lemzha:pod_node_network_receive:bytes_rate", "gauge", 1.0),
        doc="Bytes received per second by the pod's node.", sources=_NODE,
    ),
)

# Raw sources that are deliberately not canonical metrics, with the reason.
DROPPED: dict[str, str] = {
    "PodSuccessRate(%)": "constant 0 in all 95,660 Nezha metric rows: a dead feature",
    "pod_success_rate": "lemzha-k copy of PodSuccessRate(%): constant 0",
}

# LEMMA (via lemzha-k) names its CPU and memory differently; they map onto the same canonical metrics.
# cpu_usage_total is in cores (medians ~0.002 on 20231207), memory_working_set in bytes (checked on the data).
LEMMA_ALIASES: dict[str, tuple[str, float]] = {
    "cpu_usage_total": ("cpu_millicores", 1000.0),
    "memory_working_set": ("memory_bytes", 1.0),
}

METRIC_NAMES: tuple[str, ...] = tuple(spec.name for spec in CATALOG)
_BY_NAME = {spec.name: spec for spec in CATALOG}


def spec(name: str) -> MetricSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; the catalog has {', '.join(METRIC_NAMES)}") from None


def by_lemzhak_name() -> dict[str, tuple[MetricSpec, float]]:
    """lemzha-k parquet stem -> (metric, factor to multiply the stored value by)."""
    mapping = {s.lemzhak_name: (s, s.source_factor) for s in CATALOG if s.lemzhak_name}
    mapping.update({alias: (_BY_NAME[name], factor) for alias, (name, factor) in LEMMA_ALIASES.items()})
    return mapping


def catalog_order(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The given metric names sorted into catalog order; unknown names are an error."""
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"metrics not in the catalog: {unknown}")
    wanted = set(names)
    return tuple(n for n in METRIC_NAMES if n in wanted)


# -- traces --------------------------------------------------------------------------------------------------------
# Trace-derived series live in Prometheus already when the cluster runs the OpenTelemetry collector's `spanmetrics`
# and `servicegraph` connectors (or Tempo's metrics-generator) with a Prometheus exporter. The names below are what
# those connectors export with `namespace: traces.span.metrics` (spanmetrics) and the servicegraph defaults.
#
# Offline (Nezha) the same quantities are derived from the raw spans by `offline/data/traces.py`:
# - Nezha spans have no span kind: a span is a *server* span when it has no parent (ParentID "root") or when its
#   parent is in another pod; the caller of that request is the parent's pod. Services come from pods by the one
#   pod -> service rule (`lemzha.services`). Live, `service_name` must carry that same service name (the Deployment
#   name, e.g. OTEL_SERVICE_NAME from the pod's `app` label).
# - A span counts in the bin holding its *start* time (`lemzha.binning`); its duration is end - start.
# - Nezha has no status codes, so there is no error feature: every span is STATUS_CODE_UNSET and the live queries
#   do not select on status_code (failed requests still count as calls).
# - Per bin the model gets the service features and edge features listed in TRACE_FEATURES. Quantiles and means are
#   computed from the bucket counts with `lemzha.histogram.histogram_quantile`, the function Prometheus applies
#   live, so offline and live agree on the same buckets.
#
# Live, every expression is evaluated on the pod metrics' grid (bin end - 1 ms, a 29,999 ms range, one bin on
# Prometheus 2.x); `increase()` of a counter over that range is the count inside the bin.

SPAN_BUCKETS_MS: tuple[float, ...] = (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10_000, 15_000)
"""The spanmetrics connector's default explicit buckets, in milliseconds (`le` of the span duration histogram)."""
SERVICE_GRAPH_BUCKETS_S: tuple[float, ...] = tuple(b / 1000 for b in SPAN_BUCKETS_MS)
"""The servicegraph connector's default `latency_histogram_buckets`, in seconds: the same bounds as the spans'."""
BUCKET_NS: tuple[int, ...] = tuple(int(b) * 1_000_000 for b in SPAN_BUCKETS_MS)
"""The shared bounds in integer nanoseconds: offline a duration d (ns) falls in the first bucket with d <= bound."""
BUCKET_COLUMNS: tuple[str, ...] = (*(f"le_{int(b)}ms" for b in SPAN_BUCKETS_MS), "le_inf")
"""Scenario columns of the cumulative bucket counts (`le` semantics), the last one +Inf (= all calls)."""

TRACE_NAMESPACE_LABEL = "k8s_namespace_name"
"""Label selecting the namespace on span metrics: the spanmetrics dimension `k8s.namespace.name` (a resource
attribute set by the k8sattributes processor), as the Prometheus exporter names it. A parameter of every trace
query (`namespace_label=`)."""
EDGE_NAMESPACE_LABEL = "server_k8s_namespace_name"
"""Namespace label on service-graph series: the servicegraph dimension `k8s.namespace.name`, which the connector
prefixes with `server_` for the callee's side. Edges into the namespace are selected (the client may be anywhere)."""


@dataclass(frozen=True)
class TraceSeries:
    """A Prometheus series family written by the OTel connectors (and by `offline.replay`)."""

    name: str  # the family name; histograms have _bucket{le}, _sum and _count series
    kind: str  # "counter" or "histogram"
    unit: str
    labels: tuple[str, ...]  # labels the connector sets, besides the namespace label
    buckets: tuple[float, ...] = ()  # finite `le` bounds, in `unit`
    doc: str = ""


SPAN_CALLS = TraceSeries(
    "traces_span_metrics_calls_total", "counter", "1",
    ("service_name", "span_name", "span_kind", "status_code"),
    doc="Spans per service, operation, kind and status; server spans (span_kind=SPAN_KIND_SERVER) are the calls.",
)
SPAN_DURATION = TraceSeries(
    "traces_span_metrics_duration_milliseconds", "histogram", "ms",
    ("service_name", "span_name", "span_kind", "status_code"), SPAN_BUCKETS_MS,
    doc="Span durations (end - start) in milliseconds.",
)
GRAPH_REQUESTS = TraceSeries(
    "traces_service_graph_request_total", "counter", "1", ("client", "server", "connection_type"),
    doc="Requests from the client service to the server service.",
)
GRAPH_SERVER_SECONDS = TraceSeries(
    "traces_service_graph_request_server_seconds", "histogram", "s", ("client", "server", "connection_type"),
    SERVICE_GRAPH_BUCKETS_S,
    doc="Request durations as seen by the server (its server span), in seconds.",
)
GRAPH_CLIENT_SECONDS = TraceSeries(
    "traces_service_graph_request_client_seconds", "histogram", "s", ("client", "server", "connection_type"),
    SERVICE_GRAPH_BUCKETS_S,
    doc="Request durations as seen by the client (its outgoing call span), in seconds; only _sum and _count are read.",
)
TRACE_SERIES: tuple[TraceSeries, ...] = (SPAN_CALLS, SPAN_DURATION, GRAPH_REQUESTS, GRAPH_SERVER_SECONDS,
                                         GRAPH_CLIENT_SECONDS)

SERVER_SPAN_KIND = "SPAN_KIND_SERVER"


def _span_selector(namespace: str, namespace_label: str) -> str:
    return f'{namespace_label}="{promql_escape(namespace)}",span_kind="{SERVER_SPAN_KIND}"'


def _edge_selector(namespace: str, namespace_label: str) -> str:
    return f'{namespace_label}="{promql_escape(namespace)}"'


@dataclass(frozen=True)
class TraceFeature:
    """One per-bin trace feature the model gets, with its live PromQL.

    `level` "service" rows are keyed by `service_name`, "edge" rows by (`client`, `server`). `kind` is "count" (the
    number of calls in the bin), "mean" (sum / count of the duration histogram; NaN without calls), "quantile"
    (`histogram_quantile` over the bucket increases; NaN without calls) or, for edges, "gap" (client-side minus
    server-side duration sum over the count: the mean time a request spends between the two pods; NaN without calls).
    """

    name: str
    level: str
    kind: str
    unit: str
    quantile: float | None = None
    doc: str = ""

    def promql(self, namespace: str, namespace_label: str | None = None, bin_range: str = BIN_RANGE) -> str:
        if self.level == "service":
            label = namespace_label or TRACE_NAMESPACE_LABEL
            sel, by = _span_selector(namespace, label), "service_name"
            count, hist = SPAN_CALLS.name, SPAN_DURATION.name
        else:
            label = namespace_label or EDGE_NAMESPACE_LABEL
            sel, by = _edge_selector(namespace, label), "client, server"
            count, hist = GRAPH_REQUESTS.name, GRAPH_SERVER_SECONDS.name
        if self.kind == "count":
            return f"sum by ({by}) (increase({count}{{{sel}}}[{bin_range}]))"
        if self.kind == "mean":
            return (f"sum by ({by}) (increase({hist}_sum{{{sel}}}[{bin_range}])) / "
                    f"sum by ({by}) (increase({hist}_count{{{sel}}}[{bin_range}]))")
        if self.kind == "gap":
            return (f"(sum by ({by}) (increase({GRAPH_CLIENT_SECONDS.name}_sum{{{sel}}}[{bin_range}])) - "
                    f"sum by ({by}) (increase({hist}_sum{{{sel}}}[{bin_range}]))) * 1000 / "
                    f"sum by ({by}) (increase({hist}_count{{{sel}}}[{bin_range}]))")
        return (f"histogram_quantile({self.quantile!r}, "
                f"sum by ({by}, le) (increase({hist}_bucket{{{sel}}}[{bin_range}])))")


TRACE_FEATURES: tuple[TraceFeature, ...] = (
    TraceFeature("trace_calls", "service", "count", "calls/bin", doc="Server spans of the service started in the bin."),
    TraceFeature("trace_latency_mean_ms", "service", "mean", "ms", doc="Mean server-span duration."),
    *(TraceFeature(f"trace_latency_p{q}_ms", "service", "quantile", "ms", q / 100,
                   doc=f"P{q} of server-span durations from the span-metrics buckets.") for q in (50, 95, 99)),
    TraceFeature("edge_requests", "edge", "count", "requests/bin", doc="Requests client -> server started in the bin."),
    TraceFeature("edge_latency_p95_s", "edge", "quantile", "s", 0.95,
                 doc="P95 of the server-side duration of those requests, from the service-graph buckets."),
    TraceFeature("edge_client_gap_ms", "edge", "gap", "ms",
                 doc="Mean client-side minus server-side duration of those requests: time on the wire and in the "
                     "callee's pod outside its server span (a network delay shows here, not in the server span)."),
)
TRACE_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in TRACE_FEATURES)
SERVICE_TRACE_FEATURES: tuple[str, ...] = tuple(f.name for f in TRACE_FEATURES if f.level == "service")
EDGE_TRACE_FEATURES: tuple[str, ...] = tuple(f.name for f in TRACE_FEATURES if f.level == "edge")


def trace_feature(name: str) -> TraceFeature:
    for feature in TRACE_FEATURES:
        if feature.name == name:
            return feature
    raise KeyError(f"unknown trace feature {name!r}; the catalog has {', '.join(TRACE_FEATURE_NAMES)}")


def service_bucket_promql(namespace: str, namespace_label: str = TRACE_NAMESPACE_LABEL,
                          bin_range: str = BIN_RANGE) -> str:
    """Per (service_name, le): the bin's increase of the span-duration buckets (what the quantiles are made of)."""
    sel = _span_selector(namespace, namespace_label)
    return f"sum by (service_name, le) (increase({SPAN_DURATION.name}_bucket{{{sel}}}[{bin_range}]))"


def edge_bucket_promql(namespace: str, namespace_label: str = EDGE_NAMESPACE_LABEL,
                       bin_range: str = BIN_RANGE) -> str:
    sel = _edge_selector(namespace, namespace_label)
    return f"sum by (client, server, le) (increase({GRAPH_SERVER_SECONDS.name}_bucket{{{sel}}}[{bin_range}]))"


# -- latency sources ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencySource:
    """A per-pod request-duration histogram and request counter: what the latency and workload rules read.

    `server` and `client` select the two sides (the series a pod writes about requests it serves, and about those
    it sends); `requests` counts the served requests. `pod_labels` names the (namespace, pod) labels when they are
    not the scrape's `namespace` and `pod` (span metrics carry the span's pod as a resource attribute).
    """

    name: str  # the chart's `recordingRules.latencySource`
    histogram: str  # family name: `<histogram>_bucket{le}` is read
    requests: str
    to_seconds: float  # histogram unit -> seconds
    server: str
    client: str
    pod_labels: tuple[str, str] = ("namespace", "pod")
    per_pod: str = ""  # what it can and cannot tell per pod

    @property
    def buckets(self) -> ExporterSeries:
        return ExporterSeries(f"{self.histogram}_bucket", Exporter.MESH, namespace_label=self.pod_labels[0])


LATENCY_SOURCES: tuple[LatencySource, ...] = (
    LatencySource(
        "istio", "istio_request_duration_milliseconds", "istio_requests_total", 1e-3,
        'reporter="destination"', 'reporter="source"',
        per_pod="each sidecar reports its own pod: reporter=destination is the server side, reporter=source the "
                "client side; ambient mode (ztunnel, no sidecar) reports per node, not per pod",
    ),
    LatencySource(
        "linkerd", "response_latency_ms", "request_total", 1e-3,
        'direction="inbound"', 'direction="outbound"',
        per_pod="each proxy reports its own pod: direction=inbound is the server side, outbound the client side; "
                "inbound includes the kubelet's probes",
    ),
    LatencySource(
        "otel-spanmetrics", SPAN_DURATION.name, SPAN_CALLS.name, 1e-3,
        f'span_kind="{SERVER_SPAN_KIND}"', 'span_kind="SPAN_KIND_CLIENT"',
        (TRACE_NAMESPACE_LABEL, "k8s_pod_name"),
        per_pod="per pod only with the k8s.pod.name and k8s.namespace.name dimensions on the spanmetrics connector "
                "(k8sattributes processor); without them the series are per service and give no pod value; only "
                "traced requests count",
    ),
)
LATENCY_SOURCE_NAMES: tuple[str, ...] = (*(s.name for s in LATENCY_SOURCES), "none")


def latency_source(name: str) -> LatencySource | None:
    """The source named in values (`none`: None)."""
    if name == "none":
        return None
    for source in LATENCY_SOURCES:
        if source.name == name:
            return source
    raise ValueError(f"unknown latency source {name!r}; known: {', '.join(LATENCY_SOURCE_NAMES)}")


# Exporter sets a cluster may have, for coverage ablations (`lemzha.coverage`): cAdvisor comes with every kubelet;
# kube-state-metrics and node-exporter with kube-prometheus-stack; the mesh and the traces need more.
EXPORTER_PRESETS: dict[str, frozenset[Exporter]] = {
    "cadvisor": frozenset({Exporter.CADVISOR}),
    "cadvisor_ksm_node": frozenset({Exporter.CADVISOR, Exporter.KUBE_STATE_METRICS, Exporter.NODE_EXPORTER}),
    "full": frozenset(Exporter),
}


def metrics_provided(exporters) -> tuple[str, ...]:
    """Catalog metrics (catalog order) whose every source is among `exporters` (Exporter values or their names)."""
    have = {Exporter(e) for e in exporters}
    return tuple(s.name for s in CATALOG if set(s.sources) <= have)
