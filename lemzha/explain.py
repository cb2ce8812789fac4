"""Alerts in words a person reads at a glance, from a signal table's detail (`lemzha.signals`).

    cpu_millicores of pod api-7c9d 9.1σ above its normal median; 12 error lines where 0.4 were expected;
    span P95 4.1× its baseline (12 ms -> 49 ms)
"""

from __future__ import annotations

from lemzha.rankers import Assessment

MAX_EVENT_CHARS = 60


def _event(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_EVENT_CHARS else text[: MAX_EVENT_CHARS - 1] + "…"


def alert_text(signal: str, detail: dict | None) -> str:
    """One alert as a sentence fragment; a signal without detail is named as it is."""
    if not detail:
        return signal
    if "metric" in detail:
        direction = "above" if signal in ("cpu", "memory", "server_latency", "client_latency") else "away from"
        return f"{detail['metric']} of pod {detail['pod']} {detail['z']:.1f}σ {direction} its normal median"
    if signal == "log_errors":
        return f"{detail['lines']} error lines where {detail['expected']:g} were expected"
    if signal == "log_vanished":
        return (f"log event '{_event(detail['event'])}' went quiet: {detail['lines']} lines where "
                f"{detail['expected']:g} were expected")
    if signal == "log_new":
        return f"{detail['lines']} lines of log events never seen before, e.g. '{_event(detail['event'])}'"
    if signal == "log_volume_drop":
        return f"log volume fell to {detail['lines']} lines where {detail['expected']:g} were expected"
    if signal == "call_gap":
        return (f"calls from {detail['client']} wait longer: gap {detail['before_ms']:g} ms -> "
                f"{detail['after_ms']:g} ms")
    if signal == "span_p95":
        ratio = detail["after_ms"] / max(detail["before_ms"], 1e-9)
        return f"span P95 {ratio:.1f}× its baseline ({detail['before_ms']:g} ms -> {detail['after_ms']:g} ms)"
    return signal


def explain(assessment: Assessment, service: str) -> list[dict]:
    """The service's alerts, strongest first: {signal, evidence, text}."""
    detail = assessment.table.detail
    return [{"signal": name, "evidence": round(evidence, 2), "text": alert_text(name, detail.get((service, name)))}
            for name, evidence in assessment.alerts(service)]


def summary(assessment: Assessment, service: str) -> str:
    """The service's alerts joined in one line ("no alert" when none fired)."""
    alerts = explain(assessment, service)
    return "; ".join(a["text"] for a in alerts) if alerts else "no alert"
