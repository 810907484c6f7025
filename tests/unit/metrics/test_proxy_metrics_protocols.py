"""Each configured database's data-path series start at 0 under its own protocol label
(a Redis or MySQL service is not shown as PostgreSQL; CockroachDB is counted by the
PostgreSQL front end, so it is labelled postgres)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mwiproxy.metrics.cluster import ProxyMetrics


def test_series_start_at_zero_under_each_services_protocol() -> None:
    registry = CollectorRegistry()
    ProxyMetrics(registry, [("pg", "postgres"), ("rd", "redis"), ("my", "mysql"),
                            ("mg", "mongodb"), ("crdb", "cockroachdb"), "bare"])
    page = generate_latest(registry).decode()
    for service, protocol in (("pg", "postgres"), ("rd", "redis"), ("my", "mysql"),
                              ("mg", "mongodb"), ("crdb", "postgres"), ("bare", "postgres")):
        line = (f'mwiproxy_db_connections_total{{mode="tunnel",protocol="{protocol}",'
                f'result="success",service="{service}"}} 0.0')
        assert line in page, (service, protocol)
    assert 'protocol="cockroachdb"' not in page
    assert 'service="rd",protocol="postgres"' not in page
    assert 'protocol="postgres",result="success",service="rd"' not in page
    for protocol in ("postgres", "redis", "mysql", "mongodb"):  # refusals: one per protocol
        assert f'mwiproxy_refusals_total{{protocol="{protocol}",reason=' in page, protocol
