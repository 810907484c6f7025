"""The bench's tables: medians per path, their ratios to direct and to HAProxy, and the
issue's targets marked met or missed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# key -> (column title, format); the order of the absolute table
FIGURES: dict[str, tuple[str, str]] = {
    "gbit": ("1-conn Gbit/s", "{:.2f}"),
    "gbit16": ("16-conn Gbit/s", "{:.2f}"),
    "p50": ("RTT p50 us", "{:.1f}"),
    "p99": ("RTT p99 us", "{:.1f}"),
    "added_p50": ("added p50 us", "{:.1f}"),
    "cpu_rt": ("proxy CPU us/rt", "{:.1f}"),
    "conn_s": ("new conn/s", "{:.0f}"),
    "cpu_conn": ("proxy CPU us/new conn", "{:.0f}"),
    "conn_s_resumed": ("resumed conn/s", "{:.0f}"),
    "cpu_conn_resumed": ("proxy CPU us/resumed conn", "{:.0f}"),
    "resumed_share": ("share resumed", "{:.0%}"),
    "kib_idle": ("KiB/idle conn", "{:.1f}"),
    "held": ("conns held", "{:.0f}"),
    "held_errors": ("errors", "{:.0f}"),
}
PRODUCT = "pg-"  # the product's rows (bench.product)
PROXY_ONLY = {"cpu_rt", "cpu_conn", "cpu_conn_resumed", "kib_idle"}
RATIO_KEYS = ["gbit", "gbit16", "p50", "added_p50", "cpu_rt", "cpu_conn", "cpu_conn_resumed",
              "kib_idle", "held"]


@dataclass
class Row:
    path: str
    m: dict[str, float]


def _fmt(key: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return FIGURES[key][1].format(v)


def refs(rows: list[Row], tls: bool) -> tuple[Row | None, Row | None]:
    """(direct, HAProxy) for plain or TLS rows: HAProxy with 64 KiB buffers for plain;
    for the product's rows, direct TLS to PostgreSQL and the HAProxy topology."""
    by = {r.path: r for r in rows}
    if any(r.path.startswith(PRODUCT) for r in rows):
        return by.get("pg-direct-tls"), by.get("pg-haproxy")
    if tls:
        return by.get("direct-tls"), by.get("haproxy-tls")
    return by.get("direct"), by.get("haproxy-64k") or by.get("haproxy-16k")


def _with_added(rows: list[Row], direct: Row | None) -> None:
    for r in rows:
        if direct is not None:
            r.m["added_p50"] = r.m["p50"] - direct.m["p50"]


def _value(r: Row, key: str) -> float | None:
    if key in PROXY_ONLY and r.path.startswith("direct"):
        return None
    return r.m.get(key)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def _tables(rows: list[Row], tls: bool) -> list[str]:
    direct, hap = refs(rows, tls)
    _with_added(rows, direct)
    keys = [k for k in FIGURES if any(_value(r, k) is not None for r in rows)]
    out = ["| path | " + " | ".join(FIGURES[k][0] for k in keys) + " |",
           "|---|" + "---|" * len(keys)]
    for r in rows:
        out.append(f"| {r.path} | " + " | ".join(_fmt(k, _value(r, k)) for k in keys) + " |")
    rkeys = [k for k in RATIO_KEYS if k in keys]
    hap_name = hap.path if hap else "HAProxy"
    out += ["", f"Ratios: each cell is (this path / direct) ; (this path / {hap_name}).", "",
            "| path | " + " | ".join(FIGURES[k][0] for k in rkeys) + " |",
            "|---|" + "---|" * len(rkeys)]
    for r in rows:
        cells = []
        for k in rkeys:
            v = _value(r, k)
            d = _value(direct, k) if direct else None
            h = _value(hap, k) if hap else None
            cells.append(f"{_ratio(v, d)} ; {_ratio(v, h)}")
        out.append(f"| {r.path} | " + " | ".join(cells) + " |")
    return out


def render(rows: list[Row], runs: int) -> str:
    prod = [r for r in rows if r.path.startswith(PRODUCT)]
    core = [r for r in rows if not r.path.startswith(PRODUCT)]
    plain = [r for r in core if not r.path.endswith("-tls")]
    tls = [r for r in core if r.path.endswith("-tls")]
    lines = [f"Medians of {runs} interleaved run(s).", ""]
    if prod:
        lines += ["The product (`mwiproxy start` + `mwibot proxy`) in front of PostgreSQL 15,"
                  " via psycopg", ""] + _tables(prod, tls=True) + [""]
    if plain:
        lines += ["Raw core (not the product): plain TCP", ""] + _tables(plain, tls=False)
    if tls:
        lines += ["", "Raw core (not the product): TLS 1.3, ECDSA P-256 (client to proxy;"
                  " proxy to back end plain)", ""]
        lines += _tables(tls, tls=True)
    lines += ["", "Targets (issues 3 and 11)", ""] + targets(rows)
    return "\n".join(lines)


# ---- targets ------------------------------------------------------------------------------

Check = tuple[str, Callable[[dict[str, Row]], tuple[float, float] | None], str]


def _get(by: dict[str, Row], path: str, key: str) -> float | None:
    r = by.get(path)
    return None if r is None else r.m.get(key)


def _vs(path: str, key: str, ref: str, factor: float) -> Callable[[dict[str, Row]], tuple[float, float] | None]:
    def check(by: dict[str, Row]) -> tuple[float, float] | None:
        a, b = _get(by, path, key), _get(by, ref, key)
        return None if a is None or b is None else (a, b * factor)
    return check


def _best_of(path: str, key: str, refs_: list[str], factor: float) -> Callable[[dict[str, Row]], tuple[float, float] | None]:
    def check(by: dict[str, Row]) -> tuple[float, float] | None:
        a = _get(by, path, key)
        bs = [b for b in (_get(by, p, key) for p in refs_) if b is not None]
        return None if a is None or not bs else (a, min(bs) * factor)
    return check


def _const(path: str, key: str, bound: float) -> Callable[[dict[str, Row]], tuple[float, float] | None]:
    def check(by: dict[str, Row]) -> tuple[float, float] | None:
        a = _get(by, path, key)
        return None if a is None else (a, bound)
    return check


def _pure_over_native(by: dict[str, Row]) -> tuple[float, float] | None:
    a, b = _get(by, "core-pure-tls", "cpu_rt"), _get(by, "core-native-tls", "cpu_rt")
    return None if a is None or not b else (a / b, 1.3)


N, NT, P = "core-native", "core-native-tls", "pg-mwiproxy-tunnel"
CHECKS: list[Check] = [
    # issue 11, through the product: connect + first query p50 <= 0.9x the HAProxy
    # topology is, for sequential connections, a rate >= 1/0.9 of its rate
    ("product tunnel: new conn/s >= 1/0.9x HAProxy topology",
     _vs(P, "conn_s", "pg-haproxy", 1 / 0.9), ">="),
    ("product tunnel: CPU/new conn <= 1.0x HAProxy topology",
     _vs(P, "cpu_conn", "pg-haproxy", 1.0), "<="),
    ("product non-tunnel: CPU/new conn <= 1.0x HAProxy topology",
     _vs("pg-mwiproxy-non-tunnel", "cpu_conn", "pg-haproxy", 1.0), "<="),
    ("plain bulk 1 conn >= 0.8x direct", _vs(N, "gbit", "direct", 0.8), ">="),
    ("plain bulk 16 conns >= 0.8x direct", _vs(N, "gbit16", "direct", 0.8), ">="),
    ("plain added p50 <= 0.75x best of HAProxy 64k / pure",
     _best_of(N, "added_p50", ["haproxy-64k", "core-pure"], 0.75), "<="),
    ("plain CPU/rt <= 0.75x best of HAProxy 64k / pure",
     _best_of(N, "cpu_rt", ["haproxy-64k", "core-pure"], 0.75), "<="),
    ("plain CPU/new conn <= 1.0x HAProxy 64k", _vs(N, "cpu_conn", "haproxy-64k", 1.0), "<="),
    ("TLS bulk >= 1.2x HAProxy", _vs(NT, "gbit", "haproxy-tls", 1.2), ">="),
    ("TLS bulk >= 0.9x direct TLS", _vs(NT, "gbit", "direct-tls", 0.9), ">="),
    # issue 15: workers per core (a 2-core box: the default is 2 workers)
    ("TLS bulk 16 conns, default workers >= 1.6x one worker",
     _vs(NT, "gbit16", "core-native-1w-tls", 1.6), ">="),
    ("TLS CPU/rt <= 0.8x HAProxy", _vs(NT, "cpu_rt", "haproxy-tls", 0.8), "<="),
    ("TLS CPU/new conn <= 0.8x HAProxy", _vs(NT, "cpu_conn", "haproxy-tls", 0.8), "<="),
    ("TLS CPU/resumed conn <= 0.8x HAProxy",
     _vs(NT, "cpu_conn_resumed", "haproxy-tls", 0.8), "<="),
    ("TLS KiB/idle conn <= 0.75x HAProxy", _vs(NT, "kib_idle", "haproxy-tls", 0.75), "<="),
    ("TLS CPU/rt: pure / native >= 1.3", _pure_over_native, ">="),
    ("plain: 9,900 conns held", _const(N, "held", 9900), ">="),
    ("TLS: 9,900 conns held", _const(NT, "held", 9900), ">="),
]


def targets(rows: list[Row]) -> list[str]:
    by = {r.path: r for r in rows}
    out = []
    for text, check, op in CHECKS:
        got = check(by)
        if got is None:
            out.append(f"- {text}: not measured")
            continue
        value, bound = got
        ok = value >= bound if op == ">=" else value <= bound
        out.append(f"- {text}: **{'met' if ok else 'missed'}** ({value:.2f} vs {bound:.2f})")
    return out
