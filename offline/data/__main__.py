"""`python -m offline.data prepare|validate|audit`: extract the archives, build the scenario cache, report on it.

`audit` reads labels and ranks cases: its implementation is in the evaluation wing (`offline.eval.audit`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from offline.cli import run_cli
from offline.data.cli import add_data_arguments, prepared_from_args
from offline.data.dataset import Prepared

REPORTS = (  # subcommand, help, default --out, what --id selects
    ("validate", "per-scenario report (JSON + Markdown) and dataset card", "runs/validate",
     "report only this scenario id (repeatable), e.g. nezha/20230129_03"),
    ("audit", "per-case audit of the shipped ranker's misses (JSON + Markdown)", "runs/audit",
     "audit only this case (repeatable), e.g. nezha/20230129_15"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_arguments(sub.add_parser("prepare", help="extract archives and build the scenario cache"))
    reports = {}
    for name, help_text, out, id_help in REPORTS:
        reports[name] = sub.add_parser(name, help=help_text)
        add_data_arguments(reports[name])
        reports[name].add_argument("--out", type=Path, default=Path(out), help="report directory")
        reports[name].add_argument("--id", action="append", dest="ids", metavar="ID", help=id_help)
    reports["validate"].add_argument("--json", action="store_true", help="print the report as one JSON object")
    reports["audit"].add_argument("--all", action="store_true", help="audit every case, not only the misses")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepared = prepared_from_args(args, progress=not getattr(args, "json", False))
    if args.command == "prepare":
        print(f"{len(prepared.ids)} scenarios ready in {prepared.directory}")
        return 0
    if args.command == "audit":
        from offline.eval.audit import run_audit

        return run_audit(prepared, args)
    return run_validate(prepared, args)


def run_validate(prepared: Prepared, args: argparse.Namespace) -> int:
    """Write validate.json and validate.md to `--out`; print the dataset card (or, with `--json`, the report)."""
    from offline.data.validate import build_report, render_markdown

    report = build_report(prepared, ids=args.ids)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validate.json").write_text(json.dumps(report, indent=1))
    (args.out / "validate.md").write_text(render_markdown(report))
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print(f"{report['n_faults']} Nezha faults {report['per_day']}, {report['lemma']} LEMMA incidents")
        for item in report["card"]:
            print(f"- {item}")
        print(f"report: {args.out / 'validate.md'}")
    return 0

if __name__ == "__main__":
    sys.exit(run_cli(main))
