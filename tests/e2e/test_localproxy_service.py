"""The local proxy as a service: `mwibot start database-tunnel` (the bot renewing
in-memory credentials while clients keep connecting), and `mwibot proxy` with a
connection cap, /livez /readyz and a graceful drain on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mwiproxy.devkit.processes import terminate
from tests._testbase.ports import free_port
from tests.e2e.conftest import SERVICE, Topology, wait_for

pytestmark = pytest.mark.integration

RENEWAL_INTERVAL = "2s"


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:
        return 0, b""


class BotTunnel:
    def __init__(self, topo: Topology, name: str) -> None:
        self.port, self.diag_port = free_port(), free_port()
        self.log = topo.root / f"{name}.log"
        cmd = [sys.executable, "-m", "mwiproxy.cli.mwibot", "start", "database-tunnel",
               f"--proxy-server={topo.cluster.addr}", f"--token={topo.add_bot(name)}",
               f"--ca-pin={topo.ca_pin}", f"--storage={topo.root / name}",
               f"--listen=tcp://127.0.0.1:{self.port}", f"--service={SERVICE}",
               "--database=example-db", "--username=alice", "--credential-ttl=30s",
               f"--renewal-interval={RENEWAL_INTERVAL}",
               f"--diag-addr=127.0.0.1:{self.diag_port}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"))

    def renewals(self) -> int:
        return self.log.read_text().count("renewed output")

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture(scope="module")
def bot_tunnel(topo: Topology) -> Iterator[BotTunnel]:
    tunnel = BotTunnel(topo, "tunnel-bot")
    try:
        ready = wait_for(lambda: _get(tunnel.diag_port, "/readyz")[0] == 200, timeout=30)
        assert ready, tunnel.log.read_text()
        yield tunnel
    finally:
        tunnel.stop()


def test_mwibot_start_database_tunnel_serves_psql(topo, bot_tunnel):
    res = topo.psql(f"host=127.0.0.1 port={bot_tunnel.port} user=alice dbname=example-db "
                    "sslmode=disable", "select current_user, current_database()")
    assert res.stdout.strip() == "alice|example-db", res.stderr


def test_credentials_rotate_during_pgbench_without_failed_transactions(topo, bot_tunnel):
    args = ["-h", "127.0.0.1", "-p", str(bot_tunnel.port), "-U", "alice", "example-db"]
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", *args], capture_output=True,
                          text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    renewals_before = bot_tunnel.renewals()
    # Short pgbench runs back to back until the credentials have rotated three times (the
    # event itself, not a count expected within a fixed window); every run must be clean.
    # -C: a new connection (and so the newest certificate) for every transaction.
    deadline = time.monotonic() + 120
    runs = 0
    while bot_tunnel.renewals() - renewals_before < 3:
        assert time.monotonic() < deadline, "credentials did not rotate"
        run = subprocess.run(["pgbench", "-n", "-C", "-c", "4", "-T", "2", *args],
                             capture_output=True, text=True, timeout=120)
        runs += 1
        assert run.returncode == 0, run.stdout + run.stderr
        processed = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
        assert processed and int(processed.group(1)) > 0, run.stdout
        assert failed and failed.group(1) == "0", run.stdout
    assert runs > 0  # the rotations happened while pgbench was running


# -- mwibot proxy: cap, diagnostics, drain --------------------------------------------


def _serving_proxy(topo: Topology, out: Path, drain: str) -> tuple[object, int]:
    diag = free_port()
    lp = topo.local_proxy(out, tunnel=True, extra=(
        "--max-connections=2", f"--drain-timeout={drain}", f"--diag-addr=127.0.0.1:{diag}"))
    return lp, diag


def test_capped_callers_wait_and_a_drain_lets_open_sessions_finish(topo, alice_out):
    lp, diag = _serving_proxy(topo, alice_out, drain="30s")
    status, body = _get(diag, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "healthy", body
    first = psycopg.connect(topo.dsn(lp), autocommit=True)
    second = psycopg.connect(topo.dsn(lp), autocommit=True)
    started = time.monotonic()
    threading.Timer(1.0, first.close).start()
    with psycopg.connect(topo.dsn(lp), autocommit=True) as third:  # waits for a slot
        assert time.monotonic() - started >= 0.9  # queued, not reset
        assert third.execute("select 3").fetchone() == (3,)
    second.execute("begin")
    lp.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _get(diag, "/readyz")[0] == 503)
    assert b"draining" in _get(diag, "/readyz")[1]
    assert _get(diag, "/livez")[0] == 200
    assert second.execute("select 2").fetchone() == (2,)  # in flight: still served
    assert lp.proc.poll() is None
    second.execute("commit")
    second.close()
    assert lp.proc.wait(10) == 0


def test_the_drain_cuts_sessions_still_open_after_the_timeout(topo, alice_out):
    lp, _ = _serving_proxy(topo, alice_out, drain="1s")
    conn = psycopg.connect(topo.dsn(lp), autocommit=True)
    lp.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert lp.proc.wait(10) == 0
    assert 0.8 <= time.monotonic() - started < 5
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    conn.close()

