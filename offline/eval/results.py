"""Write RESULTS.md, and the README's results block, from run outputs: never by hand.

    python -m offline.results [--lodocv runs/lodocv/results.json] [--bench runs/bench/*.json]
                              [--out RESULTS.md] [--readme README.md]

RESULTS.md is the lodocv report (every protocol, fold, app and fault type, baselines, targets) followed by the
figures of each benchmark JSON (`python -m offline.bench ... --out FILE.json`), each with the command and git commit
that produced it. With `--readme`, the block between `<!-- results:begin -->` and `<!-- results:end -->` is replaced
by the headline table. Files are written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from offline.cli import run_cli
from offline.data.store import read_json_file
from offline.eval.report import render_markdown

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE_BASELINES = ("simplerca", "nsigma_logshare", "trace_gap", "baro", "random")


class ResultsError(ValueError):
    """A run output that is missing or not what the command expects."""


def read_json(path: Path, what: str) -> dict:
    data = read_json_file(path, what)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: {what} must be a JSON object")
    return data


def check_lodocv(results: dict, path: Path) -> None:
    missing = [k for k in ("shipped", "protocols", "provenance", "target_check", "seeds", "timing") if k not in results]
    if missing:
        raise ResultsError(f"{path}: not an offline.lodocv results.json (missing {', '.join(missing)})")


def _cell(summary: dict, key: str) -> str:
    metric = summary["pooled"][key]
    return f"{metric['mean']:.3f}" + (f" ± {metric['std']:.3f}" if metric.get("std") else "")


def _speed_rows(benches: list[tuple[Path, dict]]) -> list[str]:
    """The README's speed lines, from the benchmark JSONs that are there (operator, ranker), each naming its command."""
    rows = []
    for _, bench in benches:
        command = bench.get("provenance", {}).get("command", "")
        operator = bench.get("bundle")
        if isinstance(operator, dict) and "latency_created_to_completed" in operator:
            latency = operator["latency_created_to_completed"]
            alert = operator.get("latency_alert_to_completed", {}).get("post_to_completed", {})
            cpu = operator.get("operator_cpu_s_per_incident", {})
            for name in ("cold", "warm"):
                if figures := latency.get(f"{name}_template_cache"):
                    rows.append(f"| created → Completed, {name}, p50 / p95 | {figures['p50_s']:.2f} s / "
                                f"{figures['p95_s']:.2f} s | `{command}` |")
            if alert:
                rows.append(f"| alert posted → Completed, p95 | {alert['p95_s']:.2f} s | `{command}` |")
            if cpu:
                cells = ", ".join(f"{name} {value:.2f} s" for name, value in cpu.items())
                rows.append(f"| operator CPU per incident, by pass | {cells} | `{command}` |")
            if throughput := operator.get("throughput"):
                rows.append(f"| throughput, {throughput['incidents']} applied at once | "
                            f"{throughput['per_minute']:.0f} per minute | `{command}` |")
            if curve := operator.get("memory_curve"):
                tail = [point["rss_mib"] for point in curve if point["incidents"] >= curve[-1]["incidents"] - 200]
                rows.append(f"| operator RSS after {curve[-1]['incidents']} incidents (over the last 200: "
                            f"{min(tail):.1f}–{max(tail):.1f} MiB) | {curve[-1]['rss_mib']:.0f} MiB | `{command}` |")
            elif "operator_rss_mib" in operator:
                rows.append(f"| operator RSS after the run | {operator['operator_rss_mib']:.0f} MiB | `{command}` |")
        known = bench.get("ms_per_case_known_onset")
        if isinstance(known, dict):
            cells = ", ".join(f"{app} {v['median']:.1f} ms" for app, v in sorted(known.items()))
            rows.append(f"| ranking one case, onset given (median) | {cells} | `{command}` |")
        for size in bench.get("sizes", [])[-1:]:
            rows.append(f"| ranking {size['pods']} pods | {size['ms']:.0f} ms; RSS {size['rss_with_scenario_mib']:.0f} "
                        f"MiB holding the scenario, peak {size['peak_rss_ranking_mib']:.0f} MiB ranking it "
                        f"| `{command}` |")
    return rows


def headline(results: dict, benches: list[tuple[Path, dict]] = ()) -> str:
    """The README's table: the shipped ranker and the main baselines, per protocol, with the command beside it."""
    shipped, p = results["shipped"], results["provenance"]
    day = results["protocols"].get("day")
    lines = [f"From `{p['command']}` at git {p['git_sha'][:7]}{' (dirty)' if p.get('git_dirty') else ''} "
             f"({len(results['seeds'])} seeds, {results['timing']['total_s'] / 60:.1f} min); every table in "
             "[RESULTS.md](RESULTS.md), written from it by `python -m offline.results`.", ""]
    if day is not None:
        apps = sorted(day["rankers"][shipped]["per_app"])
        lines += [f"Leave one day out, {day['n_cases']} Nezha faults:", "",
                  "| ranker | Acc@1 | Acc@3 | MRR | " + " | ".join(f"Acc@1 {a}" for a in apps) + " |",
                  "|---|---|---|---|" + "---|" * len(apps)]
        for name in (shipped, *HEADLINE_BASELINES):
            if name not in day["rankers"]:
                continue
            s = day["rankers"][name]
            label = f"**{name}** (shipped)" if name == shipped else name
            lines.append(f"| {label} | {_cell(s, 'acc1')} | {_cell(s, 'acc3')} | {_cell(s, 'mrr')} | "
                         + " | ".join(f"{s['per_app'][a]['acc1']['mean']:.3f}" if a in s["per_app"] else "–"
                                      for a in apps) + " |")
    rows = []
    for protocol, label in (("app", "leave one app out"),):
        block = results["protocols"].get(protocol)
        if block is not None and shipped in block["rankers"]:
            rows.append(f"| {shipped}, {label} | {_cell(block['rankers'][shipped], 'acc1')} |")
    if day is not None:
        for variant, label in ((f"unknown_onset:{shipped}", "no onset given (30 min window)"),
                               (f"coverage:cadvisor:{shipped}", "cAdvisor metrics only"),
                               (f"neutral_names:{shipped}", "every service renamed")):
            if variant in day["rankers"]:
                rows.append(f"| {shipped}, {label} | {_cell(day['rankers'][variant], 'acc1')} |")
    if rows:
        lines += ["", "| variant | Acc@1 |", "|---|---|", *rows]
    speed = _speed_rows(list(benches))
    if speed:
        lines += ["", "Speed, on the 2-core development machine:", "", "| figure | value | command |", "|---|---|---|",
                  *speed]
    missed = [t for t in results["target_check"] if t["met"] is False]
    if missed:
        lines += ["", "Targets missed: " + "; ".join(f"{t['target']} {t['value']:.3f} (goal {t['goal']:g})"
                                                     for t in missed) + "."]
    return "\n".join(lines)


def bench_markdown(bench: dict, path: Path) -> str:
    """One benchmark JSON as a section: its command and commit, then each figure (nested keys joined by ' / ')."""
    p = bench.get("provenance", {})
    title = p.get("command") or path.name
    lines = [f"## `{title}`", ""]
    if p.get("git_sha"):
        lines += [f"git {p['git_sha'][:12]}{' (dirty)' if p.get('git_dirty') else ''}, {p.get('created', '')}", ""]
    lines += ["| figure | value |", "|---|---|"]

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key != "provenance":
                    walk(f"{prefix} / {key}" if prefix else str(key), inner)
        elif isinstance(value, float):
            lines.append(f"| {prefix} | {value:.4g} |")
        elif isinstance(value, int | str | bool) or value is None:
            lines.append(f"| {prefix} | {value} |")
        elif isinstance(value, list) and len(value) <= 12 and all(not isinstance(v, dict | list) for v in value):
            lines.append(f"| {prefix} | {', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in value)} |")

    walk("", bench)
    for key, rows in _record_lists(bench):  # curves and size passes: one table each
        columns = list(dict.fromkeys(c for row in rows for c in row))
        lines += ["", f"{key}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _record_lists(value, prefix: str = "") -> list[tuple[str, list[dict]]]:
    """(path, rows) of every list of flat records in a benchmark JSON (e.g. a memory curve, the scale pass)."""
    if isinstance(value, dict):
        return [found for key, inner in value.items() if key != "provenance"
                for found in _record_lists(inner, f"{prefix} / {key}" if prefix else str(key))]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [(prefix, value)]
    return []


def results_markdown(results: dict, benches: list[tuple[Path, dict]]) -> str:
    parts = ["<!-- written by python -m offline.results; do not edit by hand -->", "", render_markdown(results)]
    if benches:
        parts += ["", "# Benchmarks", ""]
        parts += [bench_markdown(bench, path) + "\n" for path, bench in benches]
    return "\n".join(parts)


def replace_block(readme: str, block: str, path: Path) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ResultsError(f"{path}: needs exactly one {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lodocv", type=Path, default=Path("runs/lodocv/results.json"),
                        help="offline.lodocv's results.json (default runs/lodocv/results.json)")
    parser.add_argument("--bench", type=Path, nargs="*", default=[],
                        help="benchmark JSON files (--out of offline.bench)")
    parser.add_argument("--out", type=Path, default=Path("RESULTS.md"), help="where to write (default RESULTS.md)")
    parser.add_argument("--readme", type=Path, help="also replace the results block of this README")
    args = parser.parse_args(argv)
    results = read_json(args.lodocv, "offline.lodocv results")
    check_lodocv(results, args.lodocv)
    benches = [(path, read_json(path, "benchmark output")) for path in args.bench]
    text = results_markdown(results, benches)
    readme = None
    if args.readme is not None:  # everything is checked before anything is written
        try:
            readme = replace_block(args.readme.read_text(), headline(results, benches), args.readme)
        except OSError as err:
            raise ResultsError(f"{args.readme}: cannot read ({err})") from None
    write_atomic(args.out, text)
    if readme is not None:
        write_atomic(args.readme, readme)
    print(f"wrote {args.out}" + (f" and the results block of {args.readme}" if readme is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
