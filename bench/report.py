"""The bench's table: medians per path, with ratios to direct and to the best HAProxy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    path: str
    m: dict[str, float]  # gbit, p50, p99, cpu_us


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _table(rows: list[Row], direct: Row | None, hap: Row | None, tls: bool) -> list[str]:
    head = ("| path | 1-conn Gbit/s | vs direct | vs HAProxy | RTT p50 us | p99 us "
            "| added p50 us | proxy CPU us/rt | CPU vs HAProxy |")
    if tls:
        head += " proxy CPU us/new conn | vs HAProxy |"
    lines = [head, "|" + "---|" * (11 if tls else 9)]
    for r in rows:
        m = r.m
        is_direct = r.path.startswith("direct")
        added = m["p50"] - direct.m["p50"] if direct else float("nan")
        cpu = "-" if is_direct else f"{m['cpu_us']:.1f}"
        line = (
            f"| {r.path} | {m['gbit']:.2f} | {_ratio(m['gbit'], direct.m['gbit'] if direct else None)}"
            f" | {_ratio(m['gbit'], hap.m['gbit'] if hap else None)} | {m['p50']:.1f}"
            f" | {m['p99']:.1f} | {added:.1f} | {cpu}"
            f" | {_ratio(m['cpu_us'], hap.m['cpu_us'] if hap and not is_direct else None)} |")
        if tls:
            conn = m.get("conn_cpu_us", 0.0)
            hap_conn = hap.m.get("conn_cpu_us") if hap and not is_direct else None
            line += f" {'-' if is_direct else f'{conn:.0f}'} | {_ratio(conn, hap_conn)} |"
        lines.append(line)
    return lines


def render(rows: list[Row], runs: int) -> str:
    """Two tables: plain paths against direct and the best HAProxy, TLS paths against
    direct TLS and HAProxy's TLS termination."""
    plain = [r for r in rows if not r.path.endswith("-tls")]
    tls = [r for r in rows if r.path.endswith("-tls")]
    by = {r.path: r for r in rows}
    lines = [f"medians of {runs} interleaved runs"]
    if plain:
        haproxies = [r for r in plain if r.path.startswith("haproxy")]
        hap = max(haproxies, key=lambda r: r.m["gbit"]) if haproxies else None
        lines += _table(plain, by.get("direct"), hap, tls=False)
    if tls:
        lines += ["", "TLS 1.3, ECDSA P-256 (client to proxy; proxy to back end plain)"]
        lines += _table(tls, by.get("direct-tls"), by.get("haproxy-tls"), tls=True)
    return "\n".join(lines)
