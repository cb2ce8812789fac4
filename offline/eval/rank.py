"""`python -m offline.rank SCENARIO_DIR --bundle B`: rank one on-disk scenario, print one JSON object.

The scenario is read without its label (a `label.json` beside it is never opened). `--method` picks the bundle's
ranker (default: what the bundle carries, the evidence ranker or an ONNX model) or a training-free baseline. Nothing
here imports torch: this is the operator's code path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lemzha.baselines import Baro, NSigma, NSigmaLogShare
from lemzha.catalog import METRIC_NAMES
from lemzha.rankers import SimpleRCA
from lemzha.scenario import Scenario
from lemzha.scenario_io import load_scenario
from offline.cli import run_cli
from offline.errors import DataError

BASELINES = {"baro": Baro, "nsigma": NSigma, "nsigma_logshare": NSigmaLogShare, "simplerca": SimpleRCA}


def missing_metrics(scenario: Scenario) -> list[str]:
    """Catalog metrics with no sample at all in the scenario (absent, or present but all NaN): masked in ranking."""
    present = {m for i, m in enumerate(scenario.metrics) if not np.isnan(scenario.values[:, :, i]).all()}
    return [m for m in METRIC_NAMES if m not in present]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.rank", description=__doc__)
    parser.add_argument("scenario", type=Path, help="scenario directory (scenario.json, metrics.parquet, logs.parquet)")
    parser.add_argument("--bundle", type=Path, help="bundle directory written by offline.export (for --method bundle)")
    parser.add_argument("--method", choices=["bundle", *BASELINES], default="bundle",
                        help="the bundle's ranker (default) or a baseline")
    parser.add_argument("--cache", type=Path, help="template-embedding cache directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for a model bundle (default 1)")
    args = parser.parse_args(argv)

    scenario = load_scenario(args.scenario, with_label=False)
    if args.method == "bundle":
        if args.bundle is None:
            raise DataError("--method bundle needs --bundle DIR (write one with python -m offline.export)")
        from lemzha.bundle_ranker import open_ranker

        ranker = open_ranker(args.bundle, args.cache, threads=max(1, args.threads))
        bundle_sha = ranker.bundle.sha
    else:
        ranker, bundle_sha = BASELINES[args.method](), None
    t0 = time.perf_counter()
    assessment = ranker.assess(scenario) if hasattr(ranker, "assess") else None
    ranking = assessment.ranking if assessment is not None else ranker.rank(scenario)
    ms = (time.perf_counter() - t0) * 1000
    summaries = {}
    if assessment is not None:
        from lemzha.explain import summary

        summaries = {s: summary(assessment, s) for s in ranking.services[:5]}
    print(json.dumps({
        "scenario_id": scenario.id,
        "method": ranker.name,
        "bundle_sha": bundle_sha,
        "ranking": [{"rank": i + 1, "service": s, "score": None if np.isnan(score) else score,
                     **({"summary": summaries[s]} if s in summaries else {})}
                    for i, (s, score) in enumerate(zip(ranking.services, ranking.scores, strict=True))],
        "ms": round(ms, 2),
        "missing_metrics": missing_metrics(scenario),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
