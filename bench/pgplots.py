"""PNG plots and JSON of `bench.pgbench_topology`: every run as a point, the median as a
bar, so the spread over runs shows beside the figure. Plots need matplotlib (optional)."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol


class _Cell(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def latency(self) -> bool: ...


Results = dict[tuple[str, str], list[Any]]  # (path, cell) -> samples (dataclasses)


def write_json(results: Results, cells: Sequence[_Cell], names: list[str], out: Path,
               extra: dict[str, Any], name: str = "results.json") -> Path:
    """Every sample of every run, by cell and path (medians are for the reader to take)."""
    doc = {**extra, "cells": {c.name: {n: [asdict(s) for s in results[(n, c.name)]]
                                       for n in names} for c in cells}}
    path = out / name
    path.write_text(json.dumps(doc, indent=1))
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_plots(results: Results, cells: Sequence[_Cell], names: list[str],
                out: Path, stem: str = "pgbench") -> list[Path] | str:
    """One PNG per cell: its figure (TPS, or p50 ms for latency cells) and the proxies'
    CPU per transaction; the files written, or why none were."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plots: matplotlib is not installed (scripts/install-deps --bench)"
    written = []
    for cell in cells:
        metric, title = ("p50_ms", "p50 ms (lower is better)") if cell.latency else \
            ("tps", "TPS (higher is better)")
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 1.5), sharey=True)
        for ax, attr, label in ((axes[0], metric, title),
                                (axes[1], "cpu_us_per_tx", "proxy CPU µs/tx")):
            for y, name in enumerate(names):
                vals = [getattr(s, attr) for s in results[(name, cell.name)]]
                color = "#dd8452" if name.startswith("HAProxy") else \
                    "#55a868" if name.startswith("direct") else "#4c72b0"
                ax.barh(y, statistics.median(vals), color=color, alpha=0.45)
                ax.plot([min(vals), max(vals)], [y, y], color="black", lw=1)
                ax.scatter(vals, [y] * len(vals), color="black", s=12, zorder=3)
            ax.set_title(label)
        axes[0].set_yticks(range(len(names)), names)
        axes[0].invert_yaxis()
        fig.suptitle(f"{cell.name}: bar = median, points = each run, line = min–max")
        fig.tight_layout()
        path = out / f"{stem}-{_slug(cell.name)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
