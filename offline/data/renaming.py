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


def tiled(scenario: Scenario, copies: int) -> Scenario:
    """The namespace copied `copies` times: copy j > 0 of service s is service `s-cj`, with the same pods (renamed
    `s-cj-<suffix>`), metrics, logs and traces, calling the copies of its callees. Copy 0 keeps the names and the
    label. For measuring how a ranker's cost grows with the pods of a namespace."""
    import numpy as np
    import pandas as pd

    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    renames = [{s: s if j == 0 else f"{s}-c{j}" for s in scenario.services} for j in range(copies)]
    pods: list[str] = []
    pod_service: dict[str, str] = {}
    for names in renames:
        for pod in scenario.pods:
            service = scenario.pod_service[pod]
            suffix = pod[len(service) + 1:] if pod.startswith(service + "-") else pod
            new_pod = pod if names[service] == service else f"{names[service]}-{suffix}"
            pods.append(new_pod)
            pod_service[new_pod] = names[service]

    def stacked(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
        parts = []
        for names in renames:
            part = frame.copy()
            for column in columns:
                part[column] = part[column].astype(str).map(names)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    return replace(scenario, id=f"{scenario.id}x{copies}", pods=tuple(pods), pod_service=pod_service,
                   values=np.concatenate([scenario.values] * copies, axis=1),
                   logs=stacked(scenario.logs, ("service",)),
                   service_metrics=stacked(scenario.service_metrics, ("service",)),
                   edges=stacked(scenario.edges, ("client", "server")))
