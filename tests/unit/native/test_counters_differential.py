"""Differential test of the counter slots: both builds, given the same relays on the
same keys (plain and `-ping` framed, ended cleanly or by the owner with a farewell),
read the same sums, live and at the end, and those sums are what was delivered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import Framing, relay_py

from .conftest import _relay_native
from .relaykit import FAREWELL, Joined, recv_all, run
from .test_relay_counters import until
from .test_twins_differential import SETTINGS

pytest.importorskip("mwiproxy._native._relay", reason="extension not built")
pytestmark = pytest.mark.native_only

KEYS = [("db1", "tunnel"), ("db1", "non_tunnel"), ("db2", "tunnel")]
# a relay: its key, bytes a -> b, bytes b -> a, how it ends
RELAYS = st.lists(st.tuples(st.sampled_from(range(len(KEYS))), st.integers(0, 300_000),
                            st.integers(0, 300_000), st.sampled_from(["eof", "farewell"])),
                  min_size=1, max_size=4)


async def exchange(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
                   n: int) -> None:
    if n:
        _, got = await asyncio.gather(loop.sock_sendall(src, b"z" * n), recv_all(loop, dst, n))
        assert len(got) == n


def counting(relays: list[tuple[int, int, int, str]], framed: bool) -> Any:
    async def scenario(mod: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        table = mod.engine_for(loop).counters
        joined, want = [], {}
        for k, ab, ba, _ in relays:  # all live at once
            kw = {"framed_b": Framing(None)} if framed else {}
            j = Joined(mod.Relay, loop, "socketpair", counter_slot=table.slot(KEYS[k]), **kw)
            j.relay.start()
            joined.append(j)
            if framed:  # b gets frames; only a -> b moves (the payload is what counts)
                ba = 0
                await _framed_ab(loop, j, ab)
            else:
                await exchange(loop, j.a, j.b, ab)
                await exchange(loop, j.b, j.a, ba)
            a, b = want.get(KEYS[k], (0, 0))
            want[KEYS[k]] = (a + ab, b + ba)
        await until(lambda: table.read() == want)
        live = table.read()
        for j, (_, _, _, ending) in zip(joined, relays, strict=True):
            if ending == "eof":
                j.a.shutdown(socket.SHUT_WR)
                j.b.shutdown(socket.SHUT_WR)
            else:
                j.relay.close(FAREWELL)  # the farewell is not counted: not the database's
            await j.done
            j.close()
        return {"live": live, "end": table.read(), "want": want}

    return scenario


async def _framed_ab(loop: asyncio.AbstractEventLoop, j: Joined, n: int) -> None:
    """a -> b on a framed side b arrives as frames: read them whole, count the payload."""
    if not n:
        return
    await loop.sock_sendall(j.a, b"z" * n)
    got = 0
    buf = b""
    while got < n:
        buf += await loop.sock_recv(j.b, 1 << 20)
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = int.from_bytes(buf[:4], "big")
            got += size
            buf = buf[4 + size:]


def each_build(scenario: Any) -> dict[str, Any]:
    """Run the scenario on both builds (a fresh loop each); they must observe the same."""
    seen = {}
    for name, mod in (("py", relay_py), ("native", _relay_native)):
        async def body(mod: Any = mod) -> dict[str, Any]:
            out: dict[str, Any] = await scenario(mod)
            mod.close_engine(asyncio.get_running_loop())
            return out

        seen[name] = run(body, timeout=120)
    assert seen["py"] == seen["native"]
    return seen["native"]


@settings(SETTINGS, max_examples=15)
@given(RELAYS, st.booleans())
def test_both_builds_count_the_same(relays: list[tuple[int, int, int, str]],
                                    framed: bool) -> None:
    seen = each_build(counting(relays, framed))
    assert seen["live"] == seen["end"] == seen["want"]
