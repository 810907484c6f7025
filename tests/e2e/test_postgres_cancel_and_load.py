"""Cancel reaches the right backend in both modes; many clients at once are served."""

from __future__ import annotations

import asyncio
import socket
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


def test_200_concurrent_clients(topo, tunnel):
    async def client(i: int) -> int:
        async with await psycopg.AsyncConnection.connect(topo.dsn(tunnel)) as conn:
            await asyncio.sleep(0.5)  # hold the connection so all 200 overlap
            cur = await conn.execute("select %s::int", (i,))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    async def main() -> list[int]:
        return await asyncio.gather(*(client(i) for i in range(200)))

    assert sorted(asyncio.run(main())) == list(range(200))
