"""Relay(audit="postgres" | "mysql" | "redis", on_audit=...), both builds, below Pipe: both directions go
through the query-audit tap unchanged, records come to the loop in batches (the last
ones before on_done), a malformed client message stops side A before it, and the
arguments an audited relay refuses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF, REASON_PROTOCOL
from mwiproxy._native.pgaudit_py import decode

from . import myauditkit as mykit
from . import pgauditkit as kit
from .relaykit import Joined, recv_all, run


class Records:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.came = asyncio.Event()

    def __call__(self, records: list[bytes]) -> None:
        self.batches.append(records)
        self.came.set()

    @property
    def kinds(self) -> list[str]:
        return [decode(r).kind for batch in self.batches for r in batch]

    async def until(self, kind: str) -> None:
        while kind not in self.kinds:
            self.came.clear()
            await asyncio.wait_for(self.came.wait(), 10)


@pytest.mark.parametrize("wait", [False, True])
def test_statements_and_results_are_recorded_bytes_unchanged(relay_mod: Any, wait) -> None:
    client = kit.query("select 1") + kit.parse("", "select $1") + kit.bind("", "", [b"7"]) \
        + kit.execute() + kit.SYNC
    server = kit.row(b"1") + kit.complete("SELECT 1") + kit.RFQ + kit.msg(b"1") \
        + kit.msg(b"2") + kit.row(b"7") + kit.complete("SELECT 1") + kit.RFQ

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = Records()
        j = Joined(relay_mod.Relay, loop, audit="postgres", on_audit=got, audit_wait=wait)
        j.relay.start()
        await loop.sock_sendall(j.a, client)
        assert await recv_all(loop, j.b, len(client)) == client
        await loop.sock_sendall(j.b, server)
        assert await recv_all(loop, j.a, len(server)) == server
        j.a.shutdown(1)
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        await asyncio.sleep(0)
        assert got.kinds == ["Q", "P", "B", "E", "R", "R"]  # the client ran ahead
        assert j.relay.audit_dropped == 0
        j.close()

    run(body)


def test_malformed_client_message_never_reaches_b(relay_mod: Any) -> None:
    good = kit.query("select 1")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = Records()
        j = Joined(relay_mod.Relay, loop, audit="postgres", on_audit=got)
        j.relay.start()
        await loop.sock_sendall(j.a, good + b"Q\0\0\0\2" + b"never forwarded")
        await got.until("M")
        m = [decode(r) for batch in got.batches for r in batch if decode(r).kind == "M"][0]
        assert m.n1 == len(good)
        j.relay.close(b"bye", reason=REASON_PROTOCOL)
        assert await asyncio.wait_for(j.done, 10) in (REASON_PROTOCOL, REASON_CLOSED)
        assert await recv_all(loop, j.b) == good
        assert await recv_all(loop, j.a) == b"bye"
        j.close()

    run(body)


@pytest.mark.parametrize("wait", [False, True])
def test_mysql_audited_and_inspected_bytes_unchanged(relay_mod: Any, wait) -> None:
    """MySQL: the tap reads side A before the inspector (which holds COM_INIT_DB)."""
    client = mykit.query(b"select 1") + mykit.prepare(b"select ?") + mykit.execute(1)
    server = mykit.result_set([b"1"]) + mykit.prepare_ok(1, 1, 1) + mykit.ok(3)
    use = mykit.init_db(b"shop")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = Records()
        held: list[bytes | None] = []
        j = Joined(relay_mod.Relay, loop, audit="mysql", on_audit=got, audit_wait=wait,
                   inspect="mysql", on_held=held.append)
        j.relay.start()
        await loop.sock_sendall(j.a, client)
        assert await recv_all(loop, j.b, len(client)) == client
        await loop.sock_sendall(j.b, server)
        assert await recv_all(loop, j.a, len(server)) == server
        await loop.sock_sendall(j.a, use)
        while not held:
            await asyncio.sleep(0.01)
        j.relay.resume()
        assert await recv_all(loop, j.b, len(use)) == use
        await loop.sock_sendall(j.b, mykit.ok())
        assert await recv_all(loop, j.a, len(mykit.ok())) == mykit.ok()
        j.a.shutdown(1)
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        await asyncio.sleep(0)
        assert got.kinds == ["Q", "P", "E", "R", "R", "R", "I", "R"]
        results = [decode(r) for batch in got.batches for r in batch if r[:1] == b"R"]
        assert [r.n1 for r in results] == [1, 1, 3, 0]  # the PREPARE's: its parameters
        j.close()

    run(body)


def test_redis_audited_and_inspected_every_command_recorded(relay_mod: Any) -> None:
    """Redis: the tap reads side A before the inspector (which holds AUTH)."""
    client = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n" + b"PING\r\n"

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = Records()
        held: list[bytes | None] = []
        j = Joined(relay_mod.Relay, loop, audit="redis", on_audit=got, inspect="resp",
                   on_held=held.append)
        j.relay.start()
        await loop.sock_sendall(j.a, client)
        while not held:  # SET passes natively, the inline PING is held
            await asyncio.sleep(0.01)
        j.relay.resume()
        assert await recv_all(loop, j.b, len(client)) == client
        j.a.shutdown(1)
        j.b.shutdown(1)
        assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        await asyncio.sleep(0)
        recs = [decode(r) for batch in got.batches for r in batch]
        assert [(r.kind, r.fields[0][1], r.aux) for r in recs] == [("K", b"SET", 2),
                                                                  ("K", b"PING", 0)]
        j.close()

    run(body)


def test_records_of_relays_sharing_a_worker_reach_each_its_own_in_order(relay_mod: Any
                                                                          ) -> None:
    """Three audited relays on one loop, their commands interleaved round by round: each
    relay's on_audit gets exactly its own commands, in the order its client sent them."""
    rounds = 40

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = [Records() for _ in range(3)]
        joined = [Joined(relay_mod.Relay, loop, audit="redis", on_audit=g) for g in got]
        for j in joined:
            j.relay.start()
        sent = [0, 0, 0]
        for r in range(rounds):
            for i, j in enumerate(joined):
                cmd = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(b"r%d-%d" % (i, r)),
                                                                b"r%d-%d" % (i, r))
                await loop.sock_sendall(j.a, cmd)
                sent[i] += len(cmd)
            await asyncio.sleep(0)
        for i, j in enumerate(joined):
            assert len(await recv_all(loop, j.b, sent[i])) == sent[i]
            j.a.shutdown(1)
            j.b.shutdown(1)
            assert await asyncio.wait_for(j.done, 10) == REASON_EOF
        await asyncio.sleep(0)
        for i, g in enumerate(got):
            keys = [decode(rec).fields[1][1] for batch in g.batches for rec in batch]
            assert keys == [b"r%d-%d" % (i, r) for r in range(rounds)]
        for j in joined:
            j.close()

    run(body)


def test_audit_arguments_are_checked(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        for kw in ({"audit": "cassandra", "on_audit": print}, {"audit": "postgres"},
                   {"audit": "redis", "on_audit": print, "inspect": "mysql",
                    "on_held": print},
                   {"audit": "postgres", "on_audit": print, "inspect": "resp",
                    "on_held": print},
                   {"audit": "mysql", "on_audit": print, "inspect": "resp",
                    "on_held": print}):
            with pytest.raises(ValueError):
                Joined(relay_mod.Relay, loop, **kw)

    run(body)


@pytest.mark.native_only
@pytest.mark.parametrize("wait", [False, True])
def test_a_loop_behind_drops_records_or_makes_the_relay_wait(wait) -> None:
    """The loop stops taking records for a while (blocked) as a client pipelines 60,000
    queries: records beyond the engine's buffer are dropped and counted, or, in wait
    mode, the relay stops reading until they are taken and none is lost."""
    relay_mod = pytest.importorskip("mwiproxy._native._relay")
    n = 60_000
    stream = kit.query("select 1") * n

    async def body() -> None:
        loop = asyncio.get_running_loop()
        got = Records()
        j = Joined(relay_mod.Relay, loop, audit="postgres", on_audit=got, audit_wait=wait)
        j.relay.start()
        j.a.setblocking(True)
        j.b.setblocking(True)
        sender = threading.Thread(target=j.a.sendall, args=(stream,))
        drained = bytearray()

        def drain() -> None:
            while len(drained) < len(stream):
                chunk = j.b.recv(1 << 20)
                if not chunk:
                    return
                drained.extend(chunk)
        reader = threading.Thread(target=drain)
        sender.start()
        reader.start()
        time.sleep(3)  # the loop is blocked: no record is taken meanwhile
        while reader.is_alive():
            await asyncio.sleep(0.05)
        sender.join()
        assert bytes(drained) == stream
        j.a.shutdown(socket.SHUT_WR)
        j.b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(j.done, 30)
        await asyncio.sleep(0)
        recorded = got.kinds.count("Q")
        if wait:
            assert recorded == n and j.relay.audit_dropped == 0
        else:
            assert j.relay.audit_dropped > 0 and recorded < n
            assert recorded + j.relay.audit_dropped >= n  # Q and unfinished R records
        j.close()

    run(body, timeout=120)
