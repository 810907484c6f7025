"""The bench's metrics-on mode (`bench.pgbench_topology --metrics on|both`): the
diagnostics addresses it hands out, the once-a-second scraper, and the on/off report."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from bench import pgmetrics, scrape
from bench.pgbench_topology import CELLS, Sample
from bench.scrape import Diag, Endpoint
from mwiproxy.config.cluster import load_cluster_config
from mwiproxy.config.loader import ConfigError
from mwiproxy.devkit.topology import CLUSTER_YAML, cluster_config


def _wait(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_scraper_gets_every_metrics_endpoint_and_counts_failures() -> None:
    registry = CollectorRegistry()
    Counter("mwiproxy_bench_probe", "a probe counter", registry=registry).inc()
    server, thread = start_http_server(0, "127.0.0.1", registry)
    try:
        diag = Diag()
        up = Endpoint("up", f"127.0.0.1:{server.server_port}")
        with socket.socket() as closed:  # bound, never listening: connection refused
            closed.bind(("127.0.0.1", 0))
            down = Endpoint("down", f"127.0.0.1:{closed.getsockname()[1]}")
            diag.endpoints += [up, down]
            with diag.scraping():
                assert _wait(lambda: up.scrapes >= 2 and down.failures >= 2), \
                    (up.scrapes, down.failures)
        summary = {e["process"]: e for e in diag.summary()["endpoints"]}
    finally:
        server.shutdown()
        thread.join(30)
    assert summary["up"]["failures"] == 0
    assert "mwiproxy_bench_probe" in summary["up"]["product_families"]
    assert summary["down"]["scrapes"] == 0 and summary["down"]["last_error"]


def test_cluster_template_gets_a_top_level_diag_addr_when_the_build_takes_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrape, "cluster_takes_diag_addr", lambda: True)
    diag = Diag()
    text = cluster_config(5432, diag.cluster_template(CLUSTER_YAML)).format(
        data_dir=tmp_path, port=3080)
    (endpoint,) = diag.endpoints
    assert endpoint.process == "cluster"
    assert f"\ndiag_addr: {endpoint.addr}\nproxy:\n" in text

    monkeypatch.setattr(scrape, "cluster_takes_diag_addr", lambda: False)
    older = Diag()
    assert older.cluster_template(CLUSTER_YAML) == CLUSTER_YAML
    assert not older.endpoints and "not scraped" in older.notes[0]


def test_agent_and_local_proxy_get_their_own_addresses() -> None:
    diag = Diag()
    flags = diag.proxy_flags("local proxy (tunnel)")
    line = diag.agent_extra()
    proxy, agent = diag.endpoints
    assert flags == (f"--diag-addr={proxy.addr}",)
    assert line == f"  diag_addr: {agent.addr}\n" and proxy.addr != agent.addr


def test_overhead_is_the_median_tps_on_over_off_per_path_and_cell() -> None:
    cells = [c for c in CELLS if c.name in pgmetrics.CELL_NAMES]
    results = {}
    for cell in cells:
        results[("mwiproxy tunnel, metrics on", cell.name)] = [
            Sample(960.0, 1, 2, 110.0), Sample(990.0, 1, 2, 100.0), Sample(10.0, 1, 2, 0.0)]
        results[("mwiproxy tunnel, metrics off", cell.name)] = [
            Sample(1000.0, 1, 2, 100.0), Sample(1000.0, 1, 2, 90.0), Sample(2000.0, 1, 2, 0.0)]
    figures = pgmetrics.overhead(results, cells, ["mwiproxy tunnel"])
    f = figures["mwiproxy tunnel"]["TPC-B, 16 clients"]
    assert (f["tps_on"], f["tps_off"], f["ratio"]) == (960.0, 1000.0, 0.96)
    assert (f["cpu_us_per_tx_on"], f["cpu_us_per_tx_off"]) == (100.0, 90.0)
    text = pgmetrics.table(figures)
    assert "| TPC-B, 16 clients | mwiproxy tunnel | 1000 | 960 | 0.960 | **not met** |" in text


def test_the_cluster_takes_the_templated_diag_addr_exactly_when_the_bench_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's build may refuse the key (the bench then scrapes the other processes):
    the bench's probe and the real config loader must agree either way."""
    takes = scrape.cluster_takes_diag_addr()
    monkeypatch.setattr(scrape, "cluster_takes_diag_addr", lambda: True)
    diag = Diag()
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_config(5432, diag.cluster_template(CLUSTER_YAML)).format(
        data_dir=tmp_path / "data", port=3080))
    if takes:
        assert load_cluster_config(str(path)).diag_addr == diag.endpoints[0].addr
    else:
        with pytest.raises(ConfigError, match="diag_addr"):
            load_cluster_config(str(path))
