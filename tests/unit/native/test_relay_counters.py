"""The engine's counter slots (both builds): relays started with `counter_slot` add their
bytes to it as they deliver them, so a bulk read sees live sessions, and finished ones
keep adding up. See mwiproxy/_native/counters.py."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from mwiproxy._native.counters import OVERFLOW_SLOT, SLOTS

from .relaykit import Joined, recv_all, run


async def until(pred: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for pred() (the worker counts a chunk just after its send returned)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.01)


async def move(loop: asyncio.AbstractEventLoop, j: Joined, a_to_b: int, b_to_a: int) -> None:
    """Send through the relay both ways and read it all at the other end."""
    for src, dst, n in ((j.a, j.b, a_to_b), (j.b, j.a, b_to_a)):
        if n:
            _, got = await asyncio.gather(loop.sock_sendall(src, b"x" * n),
                                          recv_all(loop, dst, n))
            assert len(got) == n


async def finish(j: Joined) -> None:
    j.a.shutdown(socket.SHUT_WR)
    j.b.shutdown(socket.SHUT_WR)
    await j.done
    j.close()


def test_a_live_relay_is_counted_before_it_ends(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        table = relay_mod.engine_for(loop).counters
        key = ("db1", "tunnel")
        j = Joined(relay_mod.Relay, loop, counter_slot=table.slot(key))
        j.relay.start()
        await move(loop, j, 70_000, 1234)
        await until(lambda: table.read().get(key) == (70_000, 1234))
        assert not j.done.done()  # live, and counted already
        await move(loop, j, 5, 0)
        await until(lambda: table.read().get(key) == (70_005, 1234))
        await finish(j)
        assert table.read()[key] == (70_005, 1234)
        relay_mod.close_engine(loop)

    run(body)


def test_finished_relays_keep_adding_up_per_key(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        table = relay_mod.engine_for(loop).counters
        one, two = ("db1", "tunnel"), ("db2", "non_tunnel")
        for n, key in ((100, one), (2000, one), (7, two)):
            j = Joined(relay_mod.Relay, loop, counter_slot=table.slot(key))
            j.relay.start()
            await move(loop, j, n, 2 * n)
            await finish(j)
            assert tuple(j.relay.stats()[:2]) == (n, 2 * n)
        uncounted = Joined(relay_mod.Relay, loop)  # no slot: no table entry moves
        uncounted.relay.start()
        await move(loop, uncounted, 50, 50)
        await finish(uncounted)
        assert table.read() == {one: (2100, 4200), two: (7, 14)}
        assert table.slot(one) == table.slot(one) != table.slot(two)
        relay_mod.close_engine(loop)

    run(body)


def test_slots_beyond_the_table_share_slot_zero_and_log_once(
        relay_mod: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        table = relay_mod.engine_for(loop).counters
        slots = {table.slot((f"db{i}", "tunnel")) for i in range(SLOTS - 1)}
        assert slots == set(range(1, SLOTS))
        with caplog.at_level(logging.WARNING, logger="mwiproxy.relay"):
            assert table.slot(("late", "tunnel")) == OVERFLOW_SLOT
            assert table.slot(("later", "tunnel")) == OVERFLOW_SLOT
        assert len([r for r in caplog.records if "slots are taken" in r.message]) == 1
        j = Joined(relay_mod.Relay, loop, counter_slot=table.slot(("late", "tunnel")))
        j.relay.start()
        await move(loop, j, 10, 20)
        await finish(j)
        read = table.read()
        assert read[("", "")] == (10, 20)
        assert read[("db0", "tunnel")] == (0, 0) and len(read) == SLOTS
        relay_mod.close_engine(loop)

    run(body)


def test_a_slot_out_of_range_is_refused_before_anything_is_taken(relay_mod: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        for bad in (-1, SLOTS):
            with pytest.raises(ValueError, match="counter_slot"):
                relay_mod.Relay(loop, a.fileno(), b.fileno(), counter_slot=bad)
        a.send(b"still ours")  # both fds are still open and the caller's
        assert b.recv(100) == b"still ours"
        a.close()
        b.close()
        relay_mod.close_engine(loop)

    run(body)


def test_the_sums_survive_the_engine(relay_mod: Any) -> None:
    """A scrape after shutdown (the engine closed) still reads the last sums."""
    async def body() -> None:
        loop = asyncio.get_running_loop()
        table = relay_mod.engine_for(loop).counters
        key = ("db1", "tunnel")
        j = Joined(relay_mod.Relay, loop, counter_slot=table.slot(key))
        j.relay.start()
        await move(loop, j, 300, 400)
        await until(lambda: table.read().get(key) == (300, 400))
        j.relay.close()
        assert await j.done == "closed"
        relay_mod.close_engine(loop)  # natively: the C table is freed, its sums kept
        assert table.read()[key] == (300, 400)
        j.close()

    run(body)
