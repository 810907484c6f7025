"""PostgreSQL restarted during pgbench through tunnel mode (`mwibot proxy … --tunnel`
against a real cluster): the clients see errors and reconnect through the same local
proxy, every pgbench run ends in bounded time (nothing hangs), and every session the
cluster opened is closed and audited."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit.topology import Topology, start_topology
from tests._testbase import postgres
from tests.chaos.conftest import pick

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

PGBENCH = str(postgres.PG_BIN / "pgbench")
CLIENTS = pick(4, 16)
RESTARTS = pick(1, 6)
GAP = pick(1.5, 8.0)  # seconds of load before each restart
RUN = pick(2, 5)  # seconds per pgbench run
HANG = 60  # a run that takes this long has hung


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path) as topology:
        yield topology


def restart(pg: postgres.PostgresServer, mode: str) -> None:
    subprocess.run([*pg.prefix, str(postgres.PG_BIN / "pg_ctl"), "-D", str(pg.data), "-w",
                    "-m", mode, "-l", str(pg.root / "log"), "restart"],
                   check=True, capture_output=True, timeout=HANG)


def transactions(stdout: str) -> int:
    found = re.search(r"number of transactions actually processed: (\d+)", stdout)
    return int(found.group(1)) if found else 0


def test_postgres_restarted_during_pgbench_through_the_tunnel(topo: Topology):
    pg = topo.pg
    subprocess.run([PGBENCH, "-i", "-s", "1", "-q", "-h", str(pg.root), "-p", str(pg.port),
                    "-U", "alice", "example-db"], check=True, capture_output=True, timeout=HANG)
    tunnel = topo.local_proxy(topo.bot_output("example"), tunnel=True)
    dsn = topo.dsn(tunnel)
    runs: list[subprocess.CompletedProcess[str]] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():  # TimeoutExpired (a hang) ends the test with a failure
            runs.append(subprocess.run(
                [PGBENCH, "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(RUN), dsn],
                capture_output=True, text=True, timeout=HANG))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        for i in range(RESTARTS):
            time.sleep(GAP)
            restart(pg, "immediate" if i % 2 else "fast")  # a crash, then a clean restart
        time.sleep(GAP)
    finally:
        done.set()
        loader.join(HANG + RUN)
    assert not loader.is_alive(), "pgbench hung"
    failed = [r for r in runs if r.returncode != 0]
    assert failed, "no pgbench run saw the restart"
    errors = "".join(r.stderr for r in failed)
    assert re.search(r"terminat|closed the connection|connection .*failed|shut ?down|"
                     r"starting up|aborted", errors), errors[-2000:]
    assert runs[-1].returncode == 0 and transactions(runs[-1].stdout) > 0, runs[-1].stderr
    assert tunnel.proc.poll() is None  # the local proxy is still serving
    ok = topo.psql(dsn, "select count(*) from pgbench_branches")
    assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr

    def closed() -> bool:  # every session the cluster opened was closed and audited
        opened = [e for e in topo.audit("db.session.start") if e.get("success")]
        return len(topo.audit("db.session.end")) == len(opened)
    deadline = time.monotonic() + 15
    while not closed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert closed()
