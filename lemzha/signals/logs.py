"""Log signals: how a service's log events changed from its reference bins to the bins from the onset.

Only *covered* bins count: bins in which the namespace wrote any line. A bin without a single line anywhere is
missing data (a collector gap; Nezha recorded logs only around each fault), never a silent service.

Counts of log lines vary more than a Poisson law allows (request mixes come in bursts), so every z-score here uses
the overdispersion measured on the service's own reference bins, never less than Poisson's:

- `log_errors`: error lines (ERROR/FATAL, or a line naming an error) in the after bins against the reference rate
  per covered bin, z = (observed - expected) / sqrt(dispersion x expected);
- `log_vanished`: the largest drop of a non-error log event's count against its reference share of the service's
  lines, a quasi-binomial z (the event's dispersion across the reference bins). An exception skips the statements
  after the throw, and a changed return value sends requests down another branch: events that were steady go quiet
  while their siblings go on;
- `log_new`: lines of events the reference never saw, against the rate at which events seen in only one reference
  bin appear (a service whose lines vary naturally scores low);
- `log_volume_drop`: the service's lines per covered bin falling against its reference rate.

Events are `lemzha.logs.event_key` of the templates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lemzha.logs import ERROR_LEVELS, event_key, is_error_line
from lemzha.memo import memo
from lemzha.scenario import Scenario
from lemzha.signals import best_per_group

LOG_SIGNALS = ("log_errors", "log_vanished", "log_new", "log_volume_drop")
MIN_REFERENCE_BINS = 2  # fewer covered reference bins give no rate to compare with


@dataclass(frozen=True)
class _LogRows:
    """A scenario's log rows coded once (onset-free): per row its bin, count, service, (service, event) pair and
    error flag; per pair its service, event text and whether it is an error event."""

    bins: np.ndarray
    counts: np.ndarray
    service: np.ndarray
    pair: np.ndarray
    error: np.ndarray
    pair_service: np.ndarray
    pair_event: np.ndarray
    pair_error: np.ndarray
    events: np.ndarray


def _code_rows(scenario: Scenario) -> _LogRows:
    logs = scenario.logs
    # factorise the (arrow-backed) string columns as they are: converting them to Python objects costs more
    template_code, unique_templates = pd.factorize(logs["template"])
    unique_templates = [str(t) for t in unique_templates]
    event_code, events = pd.factorize(np.array([event_key(t) for t in unique_templates], dtype=object))
    named_error = np.array([is_error_line(t, "") for t in unique_templates], dtype=bool)
    error = named_error[template_code] | logs["level"].isin(ERROR_LEVELS).to_numpy(dtype=bool)
    service_code, service_names = pd.factorize(logs["service"])
    index = {s: i for i, s in enumerate(scenario.services)}
    service = np.array([index[str(n)] for n in service_names], dtype=np.int64)[service_code]
    # one key per (service, event): the same event text in two services is two events
    pair, pair_keys = pd.factorize(service * len(events) + event_code[template_code])
    pair_error = np.bincount(pair, weights=error, minlength=len(pair_keys)) > 0
    return _LogRows(logs["bin"].to_numpy(), logs["count"].to_numpy(np.float64), service, pair, error,
                    pair_keys // len(events), pair_keys % len(events), pair_error, np.asarray(events, dtype=object))


def log_signals(scenario: Scenario, onset_bin: int, horizon: int
                ) -> tuple[tuple[str, ...], np.ndarray, dict[tuple[str, str], dict]]:
    """(signal names, (S, K) values, detail) for the log signals. numpy throughout: the operator ranks with it."""
    services = scenario.services
    n_services = len(services)
    values = np.zeros((n_services, len(LOG_SIGNALS)))
    detail: dict[tuple[str, str], dict] = {}
    if not len(scenario.logs):
        return LOG_SIGNALS, values, detail
    coded = memo(scenario, "log_rows", lambda: _code_rows(scenario))
    keep = coded.bins < onset_bin + horizon
    bins = coded.bins[keep]
    covered = np.unique(bins)
    ref_bins = covered[covered < onset_bin]
    n_ref, n_after = len(ref_bins), int((covered >= onset_bin).sum())
    if n_ref < MIN_REFERENCE_BINS or not n_after:
        return LOG_SIGNALS, values, detail
    counts, service, pair, error_of_row = coded.counts[keep], coded.service[keep], coded.pair[keep], coded.error[keep]
    pair_service, pair_event, pair_error, events = (coded.pair_service, coded.pair_event, coded.pair_error,
                                                    coded.events)
    n_pairs = len(pair_service)
    after = bins >= onset_bin
    ref_pos = np.searchsorted(ref_bins, bins)
    ref_rows = ~after

    def ref_matrix(rows: np.ndarray, keys: np.ndarray, n_keys: int) -> np.ndarray:
        flat = np.bincount(keys[rows] * n_ref + ref_pos[rows], weights=counts[rows], minlength=n_keys * n_ref)
        return flat.reshape(n_keys, n_ref)

    lines_ref = ref_matrix(ref_rows, service, n_services)  # (S, R)
    errors_ref = ref_matrix(ref_rows & error_of_row, service, n_services)
    pair_ref = ref_matrix(ref_rows, pair, n_pairs)  # (K, R)
    lines_after = np.bincount(service[after], weights=counts[after], minlength=n_services)
    errors_after = np.bincount(service[after & error_of_row], weights=counts[after & error_of_row],
                               minlength=n_services)
    pair_after = np.bincount(pair[after], weights=counts[after], minlength=n_pairs)

    # log_errors and log_volume_drop: quasi-Poisson against the per-bin reference rate
    for column, reference, observed, sign in ((0, errors_ref, errors_after, 1.0), (3, lines_ref, lines_after, -1.0)):
        mean = np.maximum(reference.mean(axis=1), 0.5 / n_ref)
        var = np.maximum(reference.var(axis=1, ddof=1), mean)
        expected = mean * n_after
        z = sign * (observed - expected) / np.sqrt(var / mean * expected)
        active = (observed > 0) if sign > 0 else (reference.sum(axis=1) > 0)
        values[:, column] = np.where(active & (z > 0), z, 0.0)
        for i in np.flatnonzero(values[:, column]):
            key = "log_errors" if sign > 0 else "log_volume_drop"
            detail[(services[i], key)] = {"lines": int(observed[i]), "expected": round(float(expected[i]), 1),
                                          "z": round(float(values[i, column]), 2)}

    # log_vanished: quasi-binomial drop of an event's share, dispersion from the service's active reference bins
    service_lines = lines_ref[pair_service]  # (K, R): the owning service's lines per reference bin
    active = service_lines > 0
    share = pair_ref.sum(axis=1) / np.maximum(service_lines.sum(axis=1), 1e-12)
    spread = share * (1 - share)
    expected_bins = service_lines * share[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(active, (pair_ref - expected_bins) ** 2 / (expected_bins * (1 - share)[:, None]), 0.0)
    chi = np.where(np.isfinite(terms), terms, 0.0).sum(axis=1)
    dispersion = np.maximum(chi / np.maximum(active.sum(axis=1) - 1, 1), 1.0)
    total_after = lines_after[pair_service]
    expected_after = total_after * share
    z = (pair_after - expected_after) / np.sqrt(np.maximum(dispersion * total_after * spread, 1.0))
    drop = np.where(pair_error | (share <= 0) | (total_after <= 0), 0.0, -z)
    best, where = best_per_group(drop, pair_service, n_services)
    for i in np.flatnonzero(best > 0):
        k = where[i]
        values[i, 1] = best[i]
        detail[(services[i], "log_vanished")] = {"event": str(events[pair_event[k]]), "lines": int(pair_after[k]),
                                                 "expected": round(float(expected_after[k]), 1),
                                                 "z": round(float(best[i]), 2)}

    # log_new: lines of events the reference never saw, against the service's rate of one-bin events
    seen = pair_ref.sum(axis=1) > 0
    once = (pair_ref > 0).sum(axis=1) == 1
    novel_ref = np.bincount(pair_service[once], weights=pair_ref[once].sum(axis=1), minlength=n_services)
    new_lines = np.bincount(pair_service[~seen], weights=pair_after[~seen], minlength=n_services)
    rate = (novel_ref + 0.5) / (lines_ref.sum(axis=1) + 1.0)
    expected_new = lines_after * rate
    with np.errstate(divide="ignore", invalid="ignore"):
        z_new = np.where((new_lines > 0) & (lines_ref.sum(axis=1) > 0),
                         (new_lines - expected_new) / np.sqrt(expected_new), 0.0)
    values[:, 2] = np.where(np.isfinite(z_new) & (z_new > 0), z_new, 0.0)
    newest = np.where(~seen, pair_after, -1.0)
    for i in np.flatnonzero(values[:, 2]):
        mine = np.flatnonzero(pair_service == i)
        k = mine[int(np.argmax(newest[mine]))]
        detail[(services[i], "log_new")] = {"lines": int(new_lines[i]), "expected": round(float(expected_new[i]), 1),
                                            "event": str(events[pair_event[k]]), "z": round(float(values[i, 2]), 2)}
    return LOG_SIGNALS, values, detail
