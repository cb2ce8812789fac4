"""Scenarios as a cluster with fewer exporters would see them: the coverage ablation.

Each catalog metric names the exporters it needs (`MetricSpec.sources`); a cluster with only some of them gets only
those metrics live (the rest are absent, NaN for every pod and bin). `with_exporters` makes that copy of a
scenario, so offline evaluation can measure accuracy under realistic coverage. Presets (`EXPORTER_PRESETS`):
`cadvisor` (every kubelet has it), `cadvisor_ksm_node` (kube-prometheus-stack without a mesh), `full`.

The trace features come from the OpenTelemetry spanmetrics and servicegraph connectors (`Exporter.TRACES`): without
them the copy has no trace frames. Logs come from Loki, not from an exporter, and are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from lemzha.catalog import EXPORTER_PRESETS, Exporter, metrics_provided
from lemzha.scenario import Scenario


def exporters_of(preset_or_exporters: str | Iterable[str | Exporter]) -> frozenset[Exporter]:
    """A preset's name, or exporter names, as a set of exporters; unknown names are an error naming the choices."""
    if isinstance(preset_or_exporters, str):
        try:
            return EXPORTER_PRESETS[preset_or_exporters]
        except KeyError:
            raise ValueError(f"unknown exporter preset {preset_or_exporters!r}; presets: "
                             f"{', '.join(EXPORTER_PRESETS)}") from None
    chosen = set()
    for name in preset_or_exporters:
        try:
            chosen.add(Exporter(name))
        except ValueError:
            raise ValueError(f"unknown exporter {name!r}; exporters: {', '.join(e.value for e in Exporter)}") from None
    return frozenset(chosen)


def with_exporters(scenario: Scenario, exporters: str | Iterable[str | Exporter]) -> Scenario:
    """A copy of `scenario` with only what `exporters` (a preset name or exporter names) provide: every other
    metric NaN for all pods and bins, and no trace frames without `Exporter.TRACES`. The input is not changed."""
    have = exporters_of(exporters)
    kept = set(metrics_provided(have))
    values = np.array(scenario.values, copy=True)
    for m, name in enumerate(scenario.metrics):
        if name not in kept:
            values[:, :, m] = np.nan
    if Exporter.TRACES in have:
        return dataclasses.replace(scenario, values=values)
    return dataclasses.replace(scenario, values=values, service_metrics=None, edges=None)
