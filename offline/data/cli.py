"""`python -m offline.data prepare|validate`: extract the archives, build the scenario cache, report on it."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from offline.cli import run_cli
from offline.dataset import prepare
from offline.nezha import Window
from offline.store import CACHE_ENV, DATASETS_ENV


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets", type=Path, help=f"archive directory (default ../shared/datasets, ${DATASETS_ENV})"
    )
    parser.add_argument("--cache", type=Path, help=f"cache directory (default .cache, ${CACHE_ENV})")
    parser.add_argument("--source", type=Path, help="an already-unpacked Nezha tree (with rca_data/) to use instead")
    parser.add_argument("--before", type=float, default=60.0,
                        help="window minutes before the fault: the rankers' reference (default 60)")
    parser.add_argument("--after", type=float, default=10.0, help="window minutes after the fault (default 10)")


def prepared_from_args(args: argparse.Namespace, progress: bool = True):
    if args.before <= 0 or args.after <= 0:
        raise ValueError("--before and --after must be positive minutes")
    window = Window(timedelta(minutes=args.before), timedelta(minutes=args.after))
    return prepare(args.datasets, args.cache, args.source, window, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_prepare = sub.add_parser("prepare", help="extract archives and build the scenario cache")
    add_data_arguments(p_prepare)
    p_validate = sub.add_parser("validate", help="per-scenario report (JSON + Markdown) and dataset card")
    add_data_arguments(p_validate)
    p_validate.add_argument("--out", type=Path, default=Path("runs/validate"), help="report directory")
    p_validate.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p_validate.add_argument("--id", action="append", dest="ids", metavar="ID",
                            help="report only this scenario id (repeatable), e.g. nezha/20230129_03")
    p_audit = sub.add_parser("audit", help="per-case audit of the shipped ranker's misses (JSON + Markdown)")
    add_data_arguments(p_audit)
    p_audit.add_argument("--out", type=Path, default=Path("runs/audit"), help="report directory")
    p_audit.add_argument("--all", action="store_true", help="audit every case, not only the misses")
    p_audit.add_argument("--id", action="append", dest="ids", metavar="ID",
                         help="audit only this case (repeatable), e.g. nezha/20230129_15")
    args = parser.parse_args(argv)

    prepared = prepared_from_args(args, progress=not getattr(args, "json", False))
    if args.command == "prepare":
        print(f"{len(prepared.ids)} scenarios ready in {prepared.directory}")
        return 0

    if args.command == "audit":
        return run_audit(prepared, args)

    from offline.validate import build_report, render_markdown

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


def run_audit(prepared, args: argparse.Namespace) -> int:
    from offline.audit import audit, write_audit

    scenarios = prepared.load_all()
    if args.ids:
        unknown = sorted(set(args.ids) - set(prepared.ids))
        if unknown:
            raise ValueError(f"unknown case id(s) {unknown}")
    cases = audit(scenarios, misses_only=not args.all)
    if args.ids:
        cases = [c for c in cases if c.case in args.ids]
    n_total = sum(s.dataset == "nezha" for s in scenarios)
    write_audit(cases, n_total, args.out)
    print(f"{len(cases)} of {n_total} cases audited; report: {args.out / 'audit.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
