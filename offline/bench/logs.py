"""`python -m offline.bench logs`: the log cleaner's speed on real TrainTicket lines, as lines per CPU second.

The raw lines of one Nezha TrainTicket day are split into consecutive "incidents" of about `--lines` lines each
(file by file, in time order, as Loki would return a window). Each incident goes through
`lemzha.logs.templates_and_levels`, the one path from a raw line to a log row, in this process:

- cold: the first incident with an empty template cache (a fresh operator);
- warm: every later incident, the cache filled by the ones before (an operator that has run for a while).

Figures are CPU seconds (`time.process_time`, which other jobs on the machine do not inflate), lines per CPU
second and microseconds per line, with the template cache's size and hit rate.
"""

from __future__ import annotations

import time
from pathlib import Path

TT_DAY = "2023-01-29"


def _incidents(nezha_root: Path, lines_per_incident: int, count: int) -> list[list[str]]:
    import pandas as pd

    files = sorted((nezha_root / "rca_data" / TT_DAY / "log").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no TrainTicket log files under {nezha_root / 'rca_data' / TT_DAY / 'log'}")
    incidents: list[list[str]] = [[]]
    for file in files:
        if len(incidents[-1]) >= lines_per_incident:
            if len(incidents) == count:
                break
            incidents.append([])
        incidents[-1].extend(pd.read_csv(file, usecols=["Log"])["Log"].astype(str).tolist())
    return incidents


def bench_logs(lines_per_incident: int = 20_000, count: int = 6) -> dict:
    from lemzha import logs
    from offline.data.store import ensure_extracted

    if lines_per_incident < 1 or count < 2:
        raise ValueError("--lines must be at least 1 and --incidents at least 2 (one cold, one warm)")
    incidents = _incidents(ensure_extracted("nezha"), lines_per_incident, count)
    logs.clear_template_cache()
    figures = []
    for lines in incidents:
        c0, t0 = time.process_time(), time.perf_counter()
        logs.templates_and_levels(lines)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        figures.append({"lines": len(lines), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                        "lines_per_cpu_s": round(len(lines) / cpu), "us_per_line": round(cpu / len(lines) * 1e6, 1)})
    warm = figures[1:]
    warm_lines, warm_cpu = sum(f["lines"] for f in warm), sum(f["cpu_s"] for f in warm)
    return {"day": TT_DAY, "incidents": len(figures), "cold": figures[0],
            "warm": {"lines": warm_lines, "cpu_s": round(warm_cpu, 3), "lines_per_cpu_s": round(warm_lines / warm_cpu),
                     "us_per_line": round(warm_cpu / warm_lines * 1e6, 1)},
            "per_incident": figures, "template_cache": logs.template_cache_info()}
