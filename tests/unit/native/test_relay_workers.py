"""Several engines per loop (workers, mwiproxy/_native/workers.py), both builds, over 1
and 2 workers: relays spread over the engines (natively), every byte arrives, the loop's
one counter table sums the engines, audit records and cuts reach relays on any engine,
and close_engine ends them all. The pure build accepts a count and keeps one engine."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from mwiproxy._native import REASON_CLOSED, REASON_EOF, workers
from mwiproxy._native.pgaudit_py import decode

from . import pgauditkit as kit
from .relaykit import FAREWELL, Joined, recv_all, run
from .test_relay_counters import until

RELAYS = 24


def _native(relay_mod: Any) -> bool:
    return bool(relay_mod.__name__.endswith("._relay"))


def _engines(relay_mod: Any, loop: asyncio.AbstractEventLoop, n: int) -> tuple[Any, ...]:
    engines = relay_mod.engines_for(loop, n)
    expected = n if _native(relay_mod) else 1
    assert len(engines) == expected
    assert relay_mod.engine_for(loop) is engines[0]
    return tuple(engines)


@pytest.mark.parametrize("n", [1, 2])
def test_many_relays_spread_and_counted_across_engines(relay_mod: Any, n: int) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        engines = _engines(relay_mod, loop, n)
        table = relay_mod.engine_for(loop).counters
        assert all(e.counters is table for e in engines)
        keys = [("db1", "tunnel"), ("db2", "tls")]
        joined = [Joined(relay_mod.Relay, loop, counter_slot=table.slot(keys[i % 2]))
                  for i in range(RELAYS)]
        for j in joined:
            j.relay.start()
        if len(engines) > 1:  # the least loaded engine takes each new relay: even split
            assert sorted(e.relays_running for e in engines) == [RELAYS // 2] * 2

        async def one(i: int, j: Joined) -> None:
            up, down = bytes([i]) * (1000 + i), bytes([i + 1]) * (70_000 + i)
            _, got_b, _, got_a = await asyncio.gather(
                loop.sock_sendall(j.a, up), recv_all(loop, j.b, len(up)),
                loop.sock_sendall(j.b, down), recv_all(loop, j.a, len(down)))
            assert (got_b, got_a) == (up, down)

        await asyncio.gather(*(one(i, j) for i, j in enumerate(joined)))
        want = {key: (sum(1000 + i for i in range(RELAYS) if i % 2 == k),
                      sum(70_000 + i for i in range(RELAYS) if i % 2 == k))
                for k, key in enumerate(keys)}
        await until(lambda: table.read() == want)  # live relays, summed over engines
        for j in joined:
            j.a.shutdown(socket.SHUT_WR)
            j.b.shutdown(socket.SHUT_WR)
        assert set(await asyncio.gather(*(j.done for j in joined))) == {REASON_EOF}
        if _native(relay_mod):
            assert sum(e.relays_running for e in engines) == 0
        relay_mod.close_engine(loop)
        assert table.read() == want  # the sums outlive the engines
        for j in joined:
            j.close()

    run(body)


@pytest.mark.parametrize("n", [1, 2])
def test_cut_and_close_reach_relays_on_every_engine(relay_mod: Any, n: int) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        _engines(relay_mod, loop, n)
        joined = [Joined(relay_mod.Relay, loop) for _ in range(6)]
        for j in joined:
            j.relay.start()
        for j in joined[:3]:  # cut with a farewell (a lock, an expiry): per relay
            j.relay.close(FAREWELL)
        for j in joined[:3]:
            assert await asyncio.wait_for(j.done, 10) == REASON_CLOSED
            assert await recv_all(loop, j.a) == FAREWELL
        if _native(relay_mod):   # the rest end as closed, on whichever engine
            relay_mod.close_engine(loop)
        else:   # the pure engine runs nothing: its relays are closed one by one
            for j in joined[3:]:
                j.relay.close()
        for j in joined[3:]:
            assert await asyncio.wait_for(j.done, 10) == REASON_CLOSED
            assert await recv_all(loop, j.b) == b""
        assert all(j.calls == 1 for j in joined)
        for j in joined:
            j.close()

    run(body)


@pytest.mark.parametrize("n", [1, 2])
def test_audit_records_come_from_every_engine(relay_mod: Any, n: int) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        _engines(relay_mod, loop, n)
        got: list[list[str]] = [[] for _ in range(4)]
        joined = [Joined(relay_mod.Relay, loop, audit="postgres",
                         on_audit=lambda rs, i=i: got[i].extend(decode(r).kind for r in rs))
                  for i in range(4)]
        for i, j in enumerate(joined):
            j.relay.start()
            q = kit.query(f"select {i}")
            await loop.sock_sendall(j.a, q)
            assert await recv_all(loop, j.b, len(q)) == q
        await until(lambda: all(kinds == ["Q"] for kinds in got))  # live, on a timer
        for j in joined:
            j.a.shutdown(socket.SHUT_WR)
            j.b.shutdown(socket.SHUT_WR)
        assert set(await asyncio.gather(*(j.done for j in joined))) == {REASON_EOF}
        relay_mod.close_engine(loop)
        for j in joined:
            j.close()

    run(body)


def test_default_workers_apply_to_new_loops(relay_mod: Any) -> None:
    before = workers._default
    try:
        workers.set_default_workers(2)
        assert workers.default_workers() == 2

        async def body() -> None:
            loop = asyncio.get_running_loop()
            native = _native(relay_mod)
            assert len(relay_mod.engines_for(loop)) == (2 if native else 1)
            assert len(relay_mod.engines_for(loop, 1)) == (2 if native else 1)  # kept
            relay_mod.close_engine(loop)

        run(body)
    finally:
        workers.set_default_workers(before)


def test_worker_counts_checked() -> None:
    assert workers.check_workers(workers.AUTO) == min(workers.cores(), workers.AUTO_CAP)
    assert workers.check_workers(3) == 3
    for bad in (-1, workers.MAX_WORKERS + 1):
        with pytest.raises(ValueError, match="workers must be"):
            workers.check_workers(bad)
    for wrong in (True, 2.0, "2"):
        with pytest.raises(TypeError):
            workers.check_workers(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        workers.set_default_workers(0 - 1)
