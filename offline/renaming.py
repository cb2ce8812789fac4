"""Rename every service of a scenario consistently: pods, logs, traces and label.

A ranker that reads no service name ranks the renamed scenario exactly as the original, up to ties (which break by
name). lodocv's `neutral_names:*` rows and the bundle's property tests use it to show that nothing leans on names.
"""

from __future__ import annotations

from dataclasses import replace

from lemzha.scenario import Injection, Scenario


def service_names(scenario: Scenario) -> dict[str, str]:
    """Each service -> `svc-NN`, in an order unrelated to the names (by pod count, then first pod's position)."""
    order = sorted(scenario.services, key=lambda s: (-sum(v == s for v in scenario.pod_service.values()),
                                                     min(i for i, p in enumerate(scenario.pods)
                                                         if scenario.pod_service[p] == s)))
    return {s: f"svc-{i:02d}" for i, s in enumerate(order)}


def rename_services(scenario: Scenario, names: dict[str, str]) -> Scenario:
    """The scenario with service s called names[s] everywhere (pods become `<new service>-pod-<k>`)."""
    if sorted(names) != sorted(scenario.services) or len(set(names.values())) != len(names):
        raise ValueError("names must map every service of the scenario to a distinct new name")
    pod_names: dict[str, str] = {}
    for pod in scenario.pods:
        service = names[scenario.pod_service[pod]]
        pod_names[pod] = f"{service}-pod-{sum(v.startswith(service + '-pod-') for v in pod_names.values())}"
    logs = scenario.logs.copy()
    logs["service"] = logs["service"].astype(str).map(names)
    traces = {}
    for field, columns in (("service_metrics", ("service",)), ("edges", ("client", "server"))):
        frame = getattr(scenario, field).copy()
        for column in columns:
            frame[column] = frame[column].astype(str).map(names)
        traces[field] = frame
    label = scenario.label
    if label is not None:
        label = replace(label, root_cause_service=names[label.root_cause_service],
                        root_cause_pods=tuple(pod_names[p] for p in label.root_cause_pods),
                        other_injections=tuple(Injection(names.get(i.service, i.service), pod_names.get(i.pod, i.pod),
                                                         i.fault_type, i.time) for i in label.other_injections))
    return replace(scenario, pods=tuple(pod_names[p] for p in scenario.pods),
                   pod_service={pod_names[p]: names[s] for p, s in scenario.pod_service.items()},
                   logs=logs, label=label, **traces)


def neutral_names(scenario: Scenario) -> Scenario:
    return rename_services(scenario, service_names(scenario))
