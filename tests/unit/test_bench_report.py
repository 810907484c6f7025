"""The bench's report and plots: the product's rows (PostgreSQL behind the product's own
processes) and the raw core's rows stay apart, each against its own direct and HAProxy,
and the plots show every run, not only the median."""

from __future__ import annotations

from pathlib import Path

from bench import plots
from bench.report import Row, render

PRODUCT_ROWS = [
    Row("pg-direct-tls", {"p50": 50.0, "p99": 90.0, "conn_s": 90.0, "gbit": 3.0}),
    Row("pg-mwiproxy-tunnel", {"p50": 150.0, "p99": 300.0, "conn_s": 60.0, "gbit": 1.5,
                               "cpu_rt": 100.0, "cpu_conn": 3000.0}),
    Row("pg-haproxy", {"p50": 200.0, "p99": 400.0, "conn_s": 50.0, "gbit": 1.8,
                       "cpu_rt": 140.0, "cpu_conn": 4000.0}),
]
CORE_ROWS = [
    Row("direct", {"p50": 20.0, "p99": 50.0, "gbit": 20.0}),
    Row("core-native", {"p50": 40.0, "p99": 80.0, "gbit": 9.0, "cpu_rt": 30.0}),
    Row("haproxy-64k", {"p50": 90.0, "p99": 900.0, "gbit": 10.0, "cpu_rt": 50.0}),
]


def _rows() -> list[Row]:
    return [Row(r.path, dict(r.m)) for r in PRODUCT_ROWS + CORE_ROWS]


def test_product_rows_are_their_own_table_against_the_haproxy_topology() -> None:
    text = render(_rows(), runs=1)
    product, _, core = text.partition("Raw core (not the product)")
    assert "pg-mwiproxy-tunnel" in product and "core-native" not in product
    assert "core-native" in core and "pg-mwiproxy-tunnel" not in core.split("Targets")[0]
    assert "(this path / pg-haproxy)" in product
    # tunnel RTT p50 150 vs direct 50 and vs the HAProxy topology 200
    assert "| pg-mwiproxy-tunnel | 0.50 ; 0.83 | 3.00 ; 0.75 |" in product


def test_product_targets_are_checked_against_the_haproxy_topology() -> None:
    text = render(_rows(), runs=1)
    # 60 conn/s >= 50 / 0.9; 3000 us <= 4000 us
    assert "product tunnel: new conn/s >= 1/0.9x HAProxy topology: **met** (60.00 vs 55.56)" \
        in text
    assert "product tunnel: CPU/new conn <= 1.0x HAProxy topology: **met**" in text
    assert "product non-tunnel: CPU/new conn <= 1.0x HAProxy topology: not measured" in text


def test_plots_are_split_by_group_and_show_each_run(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (a test dependency: the plots must render)
    runs = {r.path: [dict(r.m), {k: v * 1.1 for k, v in r.m.items()}]
            for r in PRODUCT_ROWS + CORE_ROWS}
    written = plots.write(_rows(), tmp_path, runs)
    assert not isinstance(written, str)
    names = {p.name for p in written}
    assert {"product-p50.png", "product-cpu_conn.png", "p50.png", "gbit.png"} <= names
    assert "product-gbit16.png" not in names  # not measured through the product
    assert all(p.stat().st_size > 1000 for p in written)
