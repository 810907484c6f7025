"""PNG plots, one bar chart per figure: the bar is the median, the points each run and
the line their min–max (the spread over runs). Optional: needs matplotlib."""

from __future__ import annotations

from pathlib import Path

from .report import FIGURES, PRODUCT, Row, _value

PLOTTED = ["gbit", "gbit16", "p50", "p99", "cpu_rt", "conn_s", "cpu_conn", "cpu_conn_resumed",
           "kib_idle", "held"]


def write(rows: list[Row], out: Path, runs: dict[str, list[dict[str, float]]] | None = None
          ) -> list[Path] | str:
    """The files written, or why none were."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plots: matplotlib is not installed (pip install matplotlib)"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # the product's rows (PostgreSQL behind) and the raw core's are not on one scale
    groups = [("product-", [r for r in rows if r.path.startswith(PRODUCT)]),
              ("", [r for r in rows if not r.path.startswith(PRODUCT)])]
    for (prefix, group), key in ((g, k) for g in groups for k in PLOTTED):
        pts = [(r.path, v) for r in group if (v := _value(r, key)) is not None and v == v]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5))
        colors = ["#4c72b0" if "core-native" in p or "mwiproxy" in p else
                  "#dd8452" if "haproxy" in p else
                  "#55a868" if "direct" in p else "#8172b2" for p, _ in pts]
        ax.barh([p for p, _ in pts], [v for _, v in pts], color=colors, alpha=0.6)
        for y, (p, _) in enumerate(pts):
            each = [r[key] for r in (runs or {}).get(p, []) if key in r]
            if each:
                ax.plot([min(each), max(each)], [y, y], color="black", lw=1)
                ax.scatter(each, [y] * len(each), color="black", s=12, zorder=3)
        ax.set_title(("through the product: " if prefix else "") + FIGURES[key][0]
                     + " (bar: median, points: runs)")
        ax.invert_yaxis()
        fig.tight_layout()
        path = out / f"{prefix}{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
