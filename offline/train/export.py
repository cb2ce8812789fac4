"""`python -m offline.export --out DIR`: write the bundle the operator ranks with.

`--ranker evidence` (the default) calibrates the shipped evidence ranker on the chosen days and picks its
configuration on inner validation over them (`offline.train.export_evidence`): seconds, no torch. `--ranker model`
trains and exports the neural model of earlier rounds instead (`offline.train.export_model`; its own options follow, see
`python -m offline.export --ranker model --help`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from offline.cli import run_cli
from offline.data.cli import add_data_arguments, prepared_from_args
from offline.errors import DataError
from offline.train.export_model import check_out, read_results, select_scenarios

RANKERS = ("evidence", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranker", choices=RANKERS, default="evidence", help="what the bundle carries")
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced whole)")
    parser.add_argument("--days", default="all",
                        help="Nezha days to calibrate on: all, or YYYY-MM-DD,... (default all)")
    parser.add_argument("--no-lemma", action="store_true", help="leave the LEMMA incidents out")
    parser.add_argument("--config", default="auto",
                        help="auto (inner validation over the days) or signals@threshold, e.g. "
                             "cpu,memory,log_errors,log_vanished,call_gap@1.5")
    parser.add_argument("--lodocv-results", type=Path, help="an offline.lodocv results.json for the model card")
    parser.add_argument("--quick", action="store_true", help="the default configuration, no inner validation")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--ranker", choices=RANKERS, default="evidence")
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.ranker == "model":
        from offline.train.export_model import main as export_model

        return export_model(rest)
    args = build_parser().parse_args(argv)
    from lemzha.bundle import load_bundle
    from lemzha.rankers import EvidenceConfig
    from offline.train.export_evidence import build_evidence_bundle, parse_config

    out = check_out(args.out)
    config = EvidenceConfig() if args.quick else parse_config(args.config)
    results = read_results(args.lodocv_results) if args.lodocv_results else None
    prepared = prepared_from_args(args, progress=False)
    scenarios = select_scenarios(prepared, args.days, not args.no_lemma)
    if not any(s.dataset == "nezha" for s in scenarios):
        raise DataError("no Nezha day chosen")
    manifest = build_evidence_bundle(out, scenarios, config, results,
                                     {"scenario_cache_key": prepared.index.get("key")})
    bundle = load_bundle(out)
    print(f"bundle {out} (sha256 {bundle.sha[:12]}…): evidence ranker "
          f"{json.dumps(manifest['ranker']['config'])} calibrated on {len(scenarios)} scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
