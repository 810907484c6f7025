"""The local proxy's serving behaviour: a connection cap that queues callers, a drain
with a maximum delay (both kept by `relay/listen.py`'s Listener, which the local proxy
serves on), and /livez /readyz that read credentials only."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket

from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.localproxy.health import serve_diagnostics
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.relay.listen import Listener
from mwiproxy.relay.streams import SocketStream
from mwiproxy.wire.addr import Address

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")


async def _echo(sock: socket.socket, _peer: str) -> None:
    stream = SocketStream(sock)
    while data := await stream.read(1024):
        await stream.write(data)


async def _started(max_connections: int = 0) -> tuple[Listener, int]:
    acceptor = Listener(Address("tcp", "127.0.0.1", 0), _echo,
                        max_connections=max_connections)
    acceptor.start()
    return acceptor, acceptor.address[1]


async def _ask(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    return reader, writer


def test_callers_over_the_cap_wait_and_are_served_when_a_slot_frees():
    async def main() -> None:
        acceptor, port = await _started(max_connections=2)
        first, second = await _ask(port), await _ask(port)
        for reader, _ in (first, second):
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        third = await _ask(port)  # connected by the kernel, not yet accepted
        try:
            await asyncio.wait_for(third[0].readexactly(4), 0.3)
            raise AssertionError("the third caller was served over the cap")
        except TimeoutError:
            pass
        assert acceptor.active == 2
        first[1].close()
        assert await asyncio.wait_for(third[0].readexactly(4), 5) == b"ping"
        await acceptor.drain(0)

    asyncio.run(main())


def test_drain_stops_accepting_and_waits_for_open_sessions():
    async def main() -> None:
        acceptor, port = await _started()
        reader, writer = await _ask(port)
        assert await reader.readexactly(4) == b"ping"
        draining = asyncio.ensure_future(acceptor.drain(10))
        await asyncio.sleep(0.1)
        try:
            await asyncio.open_connection("127.0.0.1", port)
            raise AssertionError("a draining proxy accepted a new connection")
        except ConnectionRefusedError:
            pass
        writer.write(b"still served")  # the open session keeps working while draining
        assert await reader.readexactly(12) == b"still served"
        assert not draining.done()
        writer.close()
        assert await asyncio.wait_for(draining, 5) is True

    asyncio.run(main())


def test_drain_cuts_what_is_still_open_after_the_timeout():
    async def main() -> None:
        acceptor, port = await _started()
        reader, _ = await _ask(port)
        assert await reader.readexactly(4) == b"ping"
        started = asyncio.get_running_loop().time()
        assert await acceptor.drain(0.2) is False
        assert asyncio.get_running_loop().time() - started < 2
        assert await asyncio.wait_for(reader.read(10), 5) == b""

    asyncio.run(main())


def _creds(ttl: dt.timedelta) -> tuple[bytes, bytes, bytes]:
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x",
                     route=DatabaseRoute("example-server", "postgres", "alice", "example-db"))
    cert = USER_CA.sign_identity(ident, key.public_key(), ttl)
    return cert_pem(cert), private_key_pem(key), HOST_CA.cert_pem


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_readyz_follows_the_credentials_and_the_drain():
    current = {"creds": _creds(dt.timedelta(minutes=5))}

    async def main() -> None:
        proxy = LocalProxy(listen="127.0.0.1:0", proxy_addr="127.0.0.1:1",  # never dialed
                           service="example-server", credentials=lambda: current["creds"])
        await proxy.start()
        diag = await serve_diagnostics("127.0.0.1:0", {"example-server": proxy.readiness})
        assert (await _get(diag.port, "/livez"))[0] == 200
        status, body = await _get(diag.port, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "healthy"
        current["creds"] = _creds(dt.timedelta(seconds=-5))
        status, body = await _get(diag.port, "/readyz/example-server")
        assert status == 503 and "expired at" in json.loads(body)["reason"]
        current["creds"] = _creds(dt.timedelta(minutes=5))
        await proxy.drain(1)
        status, body = await _get(diag.port, "/readyz")
        assert status == 503 and "draining" in body.decode()
        assert (await _get(diag.port, "/livez"))[0] == 200
        await diag.close()

    asyncio.run(main())
