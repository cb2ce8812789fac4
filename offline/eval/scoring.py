"""Evaluation metrics for service rankings: per-case Acc@k / Avg@5 / MRR, aggregates with bootstrap CIs, and a
paired bootstrap for comparing two rankers on the same cases.

A case is summarised by the 1-based rank of the true root-cause service among `n_services` candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_KEYS: tuple[str, ...] = ("acc1", "acc3", "acc5", "avg5", "mrr")
DEFAULT_BOOT = 2000
_CHUNK = 1000  # resamples per block: bounds memory at _CHUNK x n_cases floats


def case_metrics(rank: int, n_services: int) -> dict[str, float]:
    """Acc@1/3/5, Avg@5 (mean of Acc@1..Acc@5) and reciprocal rank of one case.

    A rank past `n_services` (the root cause was not ranked, see `Ranking.rank_of`) is a miss everywhere.
    """
    rank, n_services = int(rank), int(n_services)
    if n_services < 1:
        raise ValueError(f"n_services must be positive, got {n_services}")
    if rank < 1:
        raise ValueError(f"rank is 1-based, got {rank}")
    hit = rank <= n_services
    acc = {k: float(hit and rank <= k) for k in range(1, 6)}
    return {
        "acc1": acc[1],
        "acc3": acc[3],
        "acc5": acc[5],
        "avg5": float(np.mean(list(acc.values()))),
        "mrr": 1.0 / rank if hit else 0.0,
    }


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `n_boot` case resamples of `values` (n_cases, k); the same case indices for all k columns."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty((n_boot, values.shape[1]), dtype=np.float64)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def aggregate(
    ranks: Sequence[int],
    n_services: int | Sequence[int],
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> dict[str, dict]:
    """Each metric over the cases as {"mean", "std", "ci95": [lo, hi], "n"}.

    `n_services` is one count for all cases or one per case. std uses ddof=1 (0 for a single case); ci95 is a
    seeded percentile bootstrap over cases, resampling all metrics with the same indices.
    """
    ranks = [int(r) for r in ranks]
    if not ranks:
        raise ValueError("aggregate needs at least one case")
    sizes = [int(n_services)] * len(ranks) if np.isscalar(n_services) else [int(n) for n in n_services]
    if len(sizes) != len(ranks):
        raise ValueError(f"{len(ranks)} ranks but {len(sizes)} service counts")
    table = np.array([[case_metrics(r, n)[k] for k in METRIC_KEYS] for r, n in zip(ranks, sizes, strict=True)])
    n = len(ranks)
    means = table.mean(axis=0)
    stds = table.std(axis=0, ddof=1) if n > 1 else np.zeros(len(METRIC_KEYS))
    lo, hi = np.percentile(_bootstrap_means(table, n_boot, seed), [2.5, 97.5], axis=0)
    return {
        key: {"mean": float(means[i]), "std": float(stds[i]), "ci95": [float(lo[i]), float(hi[i])], "n": n}
        for i, key in enumerate(METRIC_KEYS)
    }


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired percentile bootstrap of mean(a - b) over cases (a and b resampled jointly).

    Returns mean_diff, ci95 [lo, hi], excludes_zero (the CI lies strictly on one side of 0), p_le_0 (share of
    resampled mean differences <= 0: small when a is reliably better) and n.
    """
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"a and b must be 1-D and paired, got shapes {a_arr.shape} and {b_arr.shape}")
    if a_arr.size == 0:
        raise ValueError("paired_bootstrap needs at least one case")
    diff = a_arr - b_arr
    boot = _bootstrap_means(diff[:, None], n_boot, seed)[:, 0]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "mean_diff": float(diff.mean()),
        "ci95": [float(lo), float(hi)],
        "excludes_zero": bool(lo > 0 or hi < 0),
        "p_le_0": float(np.mean(boot <= 0)),
        "n": int(diff.size),
    }
