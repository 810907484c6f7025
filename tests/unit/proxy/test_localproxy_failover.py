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


def _local(*addresses: str) -> LocalProxy:
    creds = _creds()
    return LocalProxy(listen="127.0.0.1:0", proxy_addr=",".join(addresses), service="db",
                      credentials=lambda: creds, tunnel=True)


def _addr(cluster: Cluster) -> str:
    return "{}:{}".format(*cluster.listener.address)


def test_a_dead_address_is_passed_over_and_the_live_one_stays_first():
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> tuple[list[bytes], str, int]:
        live = Cluster()
        await live.listener.start()
        local = _local(dead, _addr(live))
        await local.start()
        assert local.proxy_port != live.listener.address[1]  # tried in the order given
        answers = [await _ask(local) for _ in range(3)]
        first = f"{local.proxy_host}:{local.proxy_port}"
        await local.close()
        await live.listener.close()
        return answers, first, len(live.callers)

    answers, first, served = asyncio.run(main())
    startup = pg.build_startup({"user": "alice"})
    assert answers == [startup.upper()] * 3
    assert served == 3
    assert first != dead  # the address that worked is tried first from then on


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
