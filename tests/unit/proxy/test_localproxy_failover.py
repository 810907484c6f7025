"""The local proxy given several cluster addresses (`--proxy=a:3080,b:3080`): a process
that refuses the TCP connection, or that dies between the handshake and its first
answer, costs the client nothing (the next address serves it), the address that worked
stays first, and when none answers the client's error names every address."""

from __future__ import annotations

import asyncio

import pytest

from mwiproxy.devkit import free_port
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire import alpn
from mwiproxy.wire import postgres as pg
from tests.unit.proxy.test_localproxy_resumption import Cluster, _creds


class DyingCluster(Cluster):
    """Completes the TLS handshake, then goes away without answering (a process killed
    between accepting a connection and serving it)."""

    def __init__(self) -> None:
        super().__init__()
        self.listener.route_tls(alpn.POSTGRES, self._die)

    async def _die(self, stream: ByteStream, caller: object, _remote: str) -> None:
        self.callers.append(b"")
        stream.close()


async def _ask(local: LocalProxy) -> bytes:
    """A PostgreSQL startup through the local proxy; the cluster's answer (or refusal)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", local.port)
    startup = pg.build_startup({"user": "alice"})
    writer.write(startup)
    try:
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _local(*addresses: str, spread: bool = False) -> LocalProxy:
    creds = _creds()
    return LocalProxy(listen="127.0.0.1:0", proxy_addr=",".join(addresses), service="db",
                      credentials=lambda: creds, tunnel=True, spread=spread)


def _addr(cluster: Cluster) -> str:
    return "{}:{}".format(*cluster.listener.address)


@pytest.mark.parametrize("spread", [False, True])
def test_a_dead_address_is_passed_over_and_then_put_last(caplog, spread: bool):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> tuple[list[bytes], int]:
        live = Cluster()
        await live.listener.start()
        local = _local(dead, _addr(live), spread=spread)
        await local.start()
        answers = [await _ask(local) for _ in range(4)]
        await local.close()
        await live.listener.close()
        return answers, len(live.callers)

    with caplog.at_level("WARNING", logger="mwiproxy"):
        answers, served = asyncio.run(main())
    startup = pg.build_startup({"user": "alice"})
    assert answers == [startup.upper()] * 4
    assert served == 4
    # dialed once (first in the order given); then behind the live one for a while
    passed_over = [r for r in caplog.records if "trying the next cluster address" in
                   r.getMessage()]
    assert len(passed_over) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(("spread", "split"), [(False, (6, 0)), (True, (3, 3))])
def test_new_connections_go_to_the_first_or_with_spread_take_turns(spread: bool,
                                                                    split: tuple[int, int]):
    async def main() -> tuple[list[bytes], int, int]:
        a, b = Cluster(), Cluster()
        for c in (a, b):
            await c.listener.start()
        local = _local(_addr(a), _addr(b), spread=spread)
        await local.start()
        answers = [await _ask(local) for _ in range(6)]
        await local.close()
        for c in (a, b):
            await c.listener.close()
        return answers, len(a.callers), len(b.callers)

    answers, on_a, on_b = asyncio.run(main())
    assert answers == [pg.build_startup({"user": "alice"}).upper()] * 6
    assert (on_a, on_b) == split


def test_a_process_dying_before_its_first_answer_hands_the_client_to_the_next():
    async def main() -> tuple[bytes, int, int]:
        dying, live = DyingCluster(), Cluster()
        await dying.listener.start()
        await live.listener.start()
        local = _local(_addr(dying), _addr(live))
        await local.start()
        answer = await _ask(local)
        await local.close()
        for c in (dying, live):
            await c.listener.close()
        return answer, len(dying.callers), len(live.callers)

    answer, on_dying, on_live = asyncio.run(main())
    assert answer == pg.build_startup({"user": "alice"}).upper()
    assert (on_dying, on_live) == (1, 1)  # the same first packet went to the second one


def test_a_single_address_that_closes_before_answering_is_still_a_refusal():
    async def main() -> bytes:
        dying = DyingCluster()
        await dying.listener.start()
        local = _local(_addr(dying))
        await local.start()
        answer = await _ask(local)
        await local.close()
        await dying.listener.close()
        return answer

    answer = asyncio.run(main())
    assert answer.startswith(b"E"), answer
    assert pg.INVALID_AUTHORIZATION.encode() in answer
    assert b"the cluster proxy refused the connection" in answer


def test_when_no_address_answers_the_error_names_each():
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]

    async def main() -> bytes:
        local = _local(*dead)
        await local.start()
        answer = await _ask(local)
        await local.close()
        return answer

    answer = asyncio.run(main())
    assert answer.startswith(b"E"), answer
    assert b"no cluster proxy could be reached" in answer
    for address in dead:
        assert f"cannot reach the cluster proxy at {address}".encode() in answer


@pytest.mark.parametrize("bad, why", [
    ("a:3080,,b:3080", "an empty address in the list"),
    ("a:3080,a:3080", "appears twice"),
    ("a:3080,b", "is not host:port"),
])
def test_a_bad_address_list_is_refused_at_construction(bad: str, why: str):
    with pytest.raises(ValueError, match=f"invalid proxy address: .*{why}"):
        _local(bad)
