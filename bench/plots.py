"""PNG plots of the medians, one bar chart per figure. Optional: needs matplotlib."""

from __future__ import annotations

from pathlib import Path

from .report import FIGURES, Row, _value

PLOTTED = ["gbit", "gbit16", "p50", "p99", "cpu_rt", "conn_s", "cpu_conn", "cpu_conn_resumed",
           "kib_idle", "held"]


def write(rows: list[Row], out: Path) -> list[Path] | str:
    """The files written, or why none were."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plots: matplotlib is not installed (pip install matplotlib)"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in PLOTTED:
        pts = [(r.path, v) for r in rows if (v := _value(r, key)) is not None and v == v]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5))
        colors = ["#4c72b0" if p.startswith("mwiproxy-native") else
                  "#dd8452" if p.startswith("haproxy") else
                  "#55a868" if p.startswith("direct") else "#8172b2" for p, _ in pts]
        ax.barh([p for p, _ in pts], [v for _, v in pts], color=colors)
        ax.set_title(FIGURES[key][0])
        ax.invert_yaxis()
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
