"""The cluster with proxy.workers 2 and a local proxy with --workers 2: pgbench through
tunnel mode has no failures, and the relayed bytes in /metrics, summed over both relay
engines, match what was sent."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from mwiproxy import _native
from mwiproxy.devkit import postgres
from tests._testbase.ports import free_port
from tests.e2e.conftest import CLUSTER_YAML, SERVICE, Topology, start_topology, wait_for
from tests.e2e.test_cluster_metrics import scrape, value

SENT = "mwiproxy_db_transmit_bytes_total"
ANSWER = 300_000  # bytes of each big answer
SESSIONS = 6


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    diag = f"127.0.0.1:{free_port()}"
    template = CLUSTER_YAML.replace("  ping_interval: 1s\n",
                                    "  ping_interval: 1s\n  workers: 2\n") \
        + f"diag_addr: {diag}\n"
    with start_topology(tmp_path_factory.mktemp("workers"), template) as t:
        t.diag = diag  # type: ignore[attr-defined]
        yield t


def _settled(diag: str) -> bool:
    s, _ = scrape(diag)
    return value(s, "mwiproxy_db_connections_active") == 0


def test_pgbench_and_bytes_over_two_workers(topo: Topology) -> None:
    diag: str = topo.diag  # type: ignore[attr-defined]
    # the pure build accepts the setting and relays on its one loop (README)
    said = "proxy: 2 relay worker(s)" if _native.NATIVE else "proxy: 1 relay worker(s) (pure"
    assert said in topo.cluster.log.read_text()
    out = topo.bot_output("workers-bot")
    lp = topo.local_proxy(out, tunnel=True, extra=("--workers=2",))
    args = ["-h", "127.0.0.1", "-p", str(lp.port), "-U", "alice", "example-db"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", *args],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run(["pgbench", "-n", "-c", "8", "-t", "100", *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "number of transactions actually processed: 800/800" in run.stdout
    failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert failed is None or failed.group(1) == "0"

    assert wait_for(lambda: _settled(diag), timeout=60), scrape(diag)[0]
    before = value(scrape(diag)[0], SENT, service=SERVICE, mode="tunnel",
                   direction="server_to_client")
    # overlapping sessions (each sleeps first), so both engines relay some of them
    sql = f"select pg_sleep(1), repeat('x', {ANSWER})"
    procs = [subprocess.Popen(["psql", "-At", topo.dsn(lp), "-c", sql],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(SESSIONS)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        assert stdout.strip() == "|" + "x" * ANSWER
    assert wait_for(lambda: _settled(diag), timeout=60), scrape(diag)[0]
    after = value(scrape(diag)[0], SENT, service=SERVICE, mode="tunnel",
                  direction="server_to_client")
    # the answers plus each session's small talk (startup, auth, row description)
    assert SESSIONS * ANSWER <= after - before <= SESSIONS * (ANSWER + 16_384)
    lp.stop()
