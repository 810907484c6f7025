"""The bench's table: medians per path, with ratios to direct and to the best HAProxy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    path: str
    m: dict[str, float]  # gbit, p50, p99, cpu_us


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render(rows: list[Row], runs: int) -> str:
    by = {r.path: r for r in rows}
    direct = by.get("direct")
    haproxies = [r for r in rows if r.path.startswith("haproxy")]
    hap = max(haproxies, key=lambda r: r.m["gbit"]) if haproxies else None
    head = ("| path | 1-conn Gbit/s | vs direct | vs HAProxy | RTT p50 us | p99 us "
            "| added p50 us | proxy CPU us/rt | CPU vs HAProxy |")
    lines = [f"medians of {runs} interleaved runs", head, "|" + "---|" * 9]
    for r in rows:
        m = r.m
        added = m["p50"] - direct.m["p50"] if direct else float("nan")
        cpu = "-" if r.path == "direct" else f"{m['cpu_us']:.1f}"
        lines.append(
            f"| {r.path} | {m['gbit']:.2f} | {_ratio(m['gbit'], direct.m['gbit'] if direct else None)}"
            f" | {_ratio(m['gbit'], hap.m['gbit'] if hap else None)} | {m['p50']:.1f}"
            f" | {m['p99']:.1f} | {added:.1f} | {cpu}"
            f" | {_ratio(m['cpu_us'], hap.m['cpu_us'] if hap and r.path != 'direct' else None)} |")
    return "\n".join(lines)
