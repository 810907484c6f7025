"""`python -m bench.pgbench_topology --metrics both`: what the metrics cost.

Two topologies side by side: one where every mwiproxy process has a diagnostics address
(cluster.yaml `diag_addr`, `mwibot proxy --diag-addr`, the agent's `db_service.diag_addr`)
and its /metrics is scraped once a second while a cell is measured, as Prometheus would;
one without. On each, the mwiproxy tunnel path (and the tunnel path via a database agent,
unless --no-agent) runs select-only and TPC-B with 16 clients. The two are measured
interleaved, the on/off order alternating run by run, so drift on a shared machine hits
both. Reported: median TPS with metrics on / off (the issue's bar: under 3 % lower) and
the proxies' CPU per transaction (scrapes included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from . import pgbench_topology as pt
from . import pgplots
from .scrape import Diag

CELL_NAMES = ("select-only, 16 clients", "TPC-B, 16 clients")
PATHS = ("mwiproxy tunnel", "mwiproxy tunnel -ping via agent")
SIDES = ("on", "off")
BAR = 0.03  # metrics may cost under 3 % of TPS


def _row(path: str, side: str) -> str:
    return f"{path}, metrics {side}"


def _measure(sides: dict[str, list[pt.Target]], cells: list[pt.Cell], diag: Diag,
             seconds: int, runs: int) -> dict[tuple[str, str], list[pt.Sample]]:
    results: dict[tuple[str, str], list[pt.Sample]] = {}
    for run in range(runs):
        order = SIDES if run % 2 == 0 else SIDES[::-1]
        for cell in cells:
            for side in order:
                for target in sides[side]:
                    # scraped only while measured: a scrape of the "on" processes must
                    # not load the machine during an "off" cell
                    with diag.scraping() if side == "on" else nullcontext():
                        sample = pt.run_cell(target, cell, seconds)
                    results.setdefault((_row(target.name, side), cell.name), []).append(sample)
                    print(f"run {run + 1}/{runs} {cell.name:24} {target.name:32} metrics "
                          f"{side:3} tps={sample.tps:8.1f} "
                          f"cpu/tx={sample.cpu_us_per_tx:6.1f}us", flush=True)
    return results


def overhead(results: dict[tuple[str, str], list[pt.Sample]], cells: list[pt.Cell],
             paths: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per path and cell: median TPS on and off, on/off, and CPU per transaction."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path in paths:
        for cell in cells:
            on, off = (results[(_row(path, s), cell.name)] for s in SIDES)
            tps_on = statistics.median(s.tps for s in on)
            tps_off = statistics.median(s.tps for s in off)
            out.setdefault(path, {})[cell.name] = {
                "tps_on": tps_on, "tps_off": tps_off, "ratio": tps_on / tps_off,
                "cpu_us_per_tx_on": statistics.median(s.cpu_us_per_tx for s in on),
                "cpu_us_per_tx_off": statistics.median(s.cpu_us_per_tx for s in off)}
    return out


def table(figures: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| cell | path | TPS off | TPS on | on / off | under 3 % | proxy CPU µs/tx off | "
             "on |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for path, cells in figures.items():
        for cell, f in cells.items():
            met = "met" if f["ratio"] > 1 - BAR else "**not met**"
            lines.append(f"| {cell} | {path} | {f['tps_off']:.0f} | {f['tps_on']:.0f} | "
                         f"{f['ratio']:.3f} | {met} | {f['cpu_us_per_tx_off']:.0f} | "
                         f"{f['cpu_us_per_tx_on']:.0f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cells = [c for c in pt.CELLS if c.name in CELL_NAMES]
    diag = Diag()
    with tempfile.TemporaryDirectory(prefix="mwi-pgbench-metrics-") as tmp, \
            ExitStack() as stack:
        sides: dict[str, list[pt.Target]] = {}
        for side in SIDES:
            root = Path(tmp) / side
            root.mkdir()
            targets = stack.enter_context(pt.topology(
                root, False, not args.no_agent, diag if side == "on" else None))
            sides[side] = [t for t in targets if t.name in PATHS]
        results = _measure(sides, cells, diag, args.seconds, args.runs)
    paths = [t.name for t in sides["on"]]
    figures = overhead(results, cells, paths)
    command = (f"python -m bench.pgbench_topology --metrics both --seconds {args.seconds} "
               f"--runs {args.runs}{' --no-agent' * args.no_agent}")
    report = (f"Metrics on / off (median of {args.runs} runs, {args.seconds} s each)\n\n"
              f"{table(figures)}\n\nScraped (metrics on):\n{diag.report()}\n\n"
              f"{pt.machine()}\n\nCommand: `{command}`\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    plots_dir = Path(args.plots)
    plots_dir.mkdir(parents=True, exist_ok=True)
    names = [_row(p, s) for p in paths for s in SIDES]
    extra: dict[str, Any] = {"machine": pt.machine(), "command": command, "metrics": "both",
                             "overhead": figures, "scraped": diag.summary()}
    pgplots.write_json(results, cells, names, plots_dir, extra, name="results-metrics.json")
    written = pgplots.write_plots(results, cells, names, plots_dir, stem="pgbench-metrics")
    print(written if isinstance(written, str)
          else f"plots: {', '.join(str(p) for p in written)}")
    return 0
