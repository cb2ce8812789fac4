"""Signal calibration: how rare a signal value is among ordinary services, as evidence in log10 units.

The signals of `lemzha.signals` live on different scales (IQRs of a metric, quasi z-scores of log counts, log
ratios of trace latencies) and have different tails: a latency series with a flat reference throws huge z-scores at
random, a vanished log event rarely exceeds 3. Calibration maps each value onto one scale: the evidence of x is

    -log10((1 + #{reference values >= x}) / (1 + N))

over the values of that signal for *every* service of the reference scenarios. No label is read: root causes are
one service per scenario among 10 to 46, so the sample is the ordinary services' distribution up to a small share.
Evidence 2 means "a value this large occurs for 1 service in 100". Beyond the largest reference value the tail is
extended as a Pareto tail of index 1.

A calibration stores, per signal, the values at evidence levels 0, STEP, 2 STEP, ... (a compact quantile table),
and reads evidence back by interpolation, so a bundle carries a few hundred numbers per signal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lemzha.signals import SignalTable

STEP = 0.02  # evidence resolution of the stored table, in log10 units


@dataclass(frozen=True)
class Calibration:
    """Per signal: `levels[signal][i]` is the value whose evidence is i * STEP; `sizes[signal]` is N."""

    levels: dict[str, np.ndarray]
    sizes: dict[str, int]

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.levels)

    def evidence(self, table: SignalTable, signals: tuple[str, ...]) -> np.ndarray:
        """(S, len(signals)) evidence of `table`'s values; a value <= 0, or a signal without calibration, is 0."""
        values = table.select(signals)
        out = np.zeros_like(values)
        for j, name in enumerate(signals):
            if name in self.levels:
                out[:, j] = self._evidence(values[:, j], name)
        return out

    def _evidence(self, x: np.ndarray, signal: str) -> np.ndarray:
        levels = self.levels[signal]
        grid = np.arange(len(levels)) * STEP
        # levels repeat where many services share a value (0 above all): each distinct value takes the largest
        # evidence it reaches, and values between two distinct levels are interpolated linearly
        last = np.r_[levels[1:] != levels[:-1], True]
        knots, at = levels[last], grid[last]
        evidence = np.interp(x, knots, at, left=0.0)
        # beyond the largest reference value the sample says nothing; the tail goes on as a Pareto tail of index 1
        # (ten times the value, ten times rarer), so values beyond the sample keep their order
        top = knots[-1]
        if top > 0:
            beyond = x > top
            evidence = np.where(beyond, at[-1] + np.log10(np.where(beyond, x, top) / top), evidence)
        return np.where(x > 0, evidence, 0.0)

    def to_json(self) -> dict:
        return {"step": STEP, "signals": {name: {"n": self.sizes[name], "levels": [round(float(v), 6) for v in lv]}
                                          for name, lv in self.levels.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        if float(data.get("step", -1)) != STEP:
            raise ValueError(f"calibration step {data.get('step')!r} != {STEP}")
        levels, sizes = {}, {}
        for name, entry in data["signals"].items():
            lv = np.asarray(entry["levels"], dtype=np.float64)
            if lv.ndim != 1 or not len(lv) or not np.isfinite(lv).all() or (np.diff(lv) < 0).any():
                raise ValueError(f"calibration of {name!r}: levels must be finite and non-decreasing")
            levels[name], sizes[name] = lv, int(entry["n"])
        return cls(levels, sizes)


def fit_calibration(tables: Iterable[SignalTable]) -> Calibration:
    """The calibration of every signal over all services of `tables` (label-free)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for table in tables:
        for j, name in enumerate(table.signals):
            pooled.setdefault(name, []).append(table.values[:, j])
    if not pooled:
        raise ValueError("cannot calibrate on no scenarios")
    levels, sizes = {}, {}
    for name, parts in pooled.items():
        sample = np.sort(np.concatenate(parts))
        n = len(sample)
        top = np.log10(1 + n)
        grid = np.arange(0.0, top + STEP / 2, STEP)
        # the value x at which (1 + #{>= x}) / (1 + n) = 10^-e: #{>= x} = (1 + n) 10^-e - 1
        above = np.clip((1 + n) * 10.0 ** (-grid) - 1, 0, n)
        index = np.clip(n - np.ceil(above).astype(np.int64), 0, n - 1)
        lv = np.maximum.accumulate(sample[index])
        levels[name], sizes[name] = lv, n
    return Calibration(levels, sizes)
