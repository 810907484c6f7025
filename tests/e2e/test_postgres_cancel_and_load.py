"""Cancel reaches the right backend in both modes; 1,000 clients at once are served."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from mwiproxy.wire.postgres import CancelKey, build_cancel

pytestmark = pytest.mark.integration


def _cancel_sleep(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn, \
            psycopg.connect(dsn, autocommit=True) as bystander:
        pid = conn.info.backend_pid
        threading.Timer(0.5, conn.cancel).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        elapsed = time.monotonic() - started
        # the session survives its cancelled query, and the other one was not touched
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        assert bystander.execute("select 1").fetchone() == (1,)
        return elapsed


def test_cancel_in_tunnel_mode(topo, tunnel):
    assert _cancel_sleep(topo.dsn(tunnel)) < 10


def test_cancel_in_non_tunnel_mode(topo, passthrough, alice_out):
    assert _cancel_sleep(topo.dsn(passthrough, alice_out)) < 10


def test_a_forged_cancel_key_cancels_nothing(topo, tunnel):
    with psycopg.connect(topo.dsn(tunnel), autocommit=True) as conn:
        forged = build_cancel(CancelKey(conn.info.backend_pid, 12345))  # right pid, wrong secret
        threading.Timer(0.3, _send, (tunnel.port, forged)).start()
        conn.execute("select pg_sleep(1)")  # not cancelled
        assert conn.execute("select 1").fetchone() == (1,)


def _send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.recv(1)


def test_1000_concurrent_clients_through_the_tunnel(topo, tunnel):
    """1,000 sessions open at the same moment (clients in their own process)."""
    res = subprocess.run([sys.executable, "-m", "tests.e2e.pgclients", str(tunnel.port),
                          "1000"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["errors"] == [], result["errors"]
    assert sorted(result["ok"]) == list(range(1000))
