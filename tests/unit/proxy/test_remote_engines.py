"""The cluster proxy's side of MySQL and MongoDB sessions through a database agent
(RemoteEngine.start_mysql / connect_mongo): what goes in the hello, and each agent reply
turned into what the in-process engine would give (an Upstream, the database's ERR as
MySQLRefused, UpstreamError with the agent's reason); a malformed answer is an error,
never a session. The agent here is a real link TLS listener that answers one reply."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mwiproxy import _native
from mwiproxy.devkit.ports import free_port
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.mysql import UpstreamRefused as MySQLRefused
from mwiproxy.engines.remote import RemoteEngine
from mwiproxy.identity.certs import Identity
from mwiproxy.relay.streams import BufferedReader
from mwiproxy.wire import agentlink, mysql
from mwiproxy.wire import mongodb as mongo
from tests.unit.native.pki import CA

CA_ = CA("link CA")
AGENT = CA_.issue("agent", dns=["localhost"])
PROXY = CA_.issue("proxy.c")
CALLER = Identity(user="bot-example", roles=("example-role",), cluster="c",
                  cert_der=b"client-der")
OK_PACKET = b"\x00\x00\x00\x02\x00\x00\x00"
ERR_PACKET = mysql.err_packet(1045, "28000", "Access denied for user 'gina'@'x'")[4:]


@dataclass(frozen=True)
class Agent:
    host_id: str
    hostname: str
    addr: str


async def _session(reply: agentlink.Reply, after: bytes,
                   call: Callable[[RemoteEngine], object]) -> tuple[object, agentlink.Hello]:
    """`call` on an engine whose one agent answers `reply` and then `after`."""
    hellos: list[agentlink.Hello] = []
    ctx = _native.TLSContext(True, AGENT.cert_pem, AGENT.key_pem, CA_.pem,
                             verify=_native.VERIFY_REQUIRED, alpn=[agentlink.ALPN])

    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sock: socket.socket = w.get_extra_info("socket")
        fd = sock.dup().detach()
        w.transport.abort()
        stream = _native.TLSStream(asyncio.get_running_loop(), ctx, fd)
        try:
            await stream.handshake()
            hellos.append(await agentlink.read_hello(BufferedReader(stream)))
            await stream.write(reply.encode() + after)
            await stream.read(1)  # until the proxy closes
        finally:
            stream.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    link = _native.TLSContext(False, PROXY.cert_pem, PROXY.key_pem, CA_.pem,
                              verify=_native.VERIFY_REQUIRED, alpn=[agentlink.ALPN])
    engine = RemoteEngine("db", lambda: [Agent("a1", "h", f"localhost:{port}")],
                          lambda: link, lambda **kw: f"grant-for-{kw['db_user']}")
    try:
        result = await call(engine)  # type: ignore[misc]
        stream = getattr(result, "stream", None)
        if stream is not None:
            stream.close()
        return result, hellos[0]
    finally:
        server.close()


def _mysql(engine: RemoteEngine):  # noqa: ANN202
    return engine.start_mysql("alice", "example-db", 0x000FA28D, charset=45,
                              caller=CALLER, session_id=7)


def test_a_mysql_sign_in_gives_the_databases_ok_and_what_followed_it():
    reply = agentlink.Reply(agentlink.OK, answer=OK_PACKET)
    up, hello = asyncio.run(_session(reply, b"server bytes", _mysql))
    assert (up.ok, up.leftover) == (OK_PACKET, b"server bytes")  # type: ignore[attr-defined]
    assert agentlink.read_mysql_startup(hello.startup) == (0x000FA28D, 45)
    assert (hello.db_user, hello.db_name, hello.grant) == ("alice", "example-db",
                                                           "grant-for-alice")


@pytest.mark.parametrize(("reply", "error", "match"), [
    (agentlink.Reply(agentlink.REFUSED, "refused", answer=ERR_PACKET), MySQLRefused,
     "Access denied for user 'gina'"),
    (agentlink.Reply(agentlink.ERROR, "cannot reach database 'db'"), UpstreamError,
     "cannot reach database 'db'"),
    (agentlink.Reply(agentlink.DENIED, "not a proxy"), UpstreamError, "not a proxy"),
    (agentlink.Reply(agentlink.OK, answer=ERR_PACKET), UpstreamError, "not a MySQL OK"),
    (agentlink.Reply(agentlink.REFUSED, answer=OK_PACKET), UpstreamError, "not a MySQL"),
])
def test_a_mysql_sign_in_that_fails_is_the_engines_error(reply, error, match):
    with pytest.raises(error, match=match) as err:
        asyncio.run(_session(reply, b"", _mysql))
    if error is MySQLRefused:
        assert err.value.payload == ERR_PACKET  # for the client as the database said it


def _mongo(engine: RemoteEngine):  # noqa: ANN202
    return engine.connect_mongo("alice", caller=CALLER, db_name="example-db", session_id=8)


def test_a_mongodb_sign_in_gives_the_servers_message_bound():
    for size, bound in ((16 << 20, 16 << 20), (1 << 30, mongo.MAX_MESSAGE)):
        reply = agentlink.Reply(agentlink.OK, answer=agentlink.mongo_answer(size))
        up, hello = asyncio.run(_session(reply, b"", _mongo))
        assert up.max_message_size == bound  # type: ignore[attr-defined]
        assert hello.startup == b"" and hello.grant == "grant-for-alice"


@pytest.mark.parametrize(("reply", "after", "match"), [
    (agentlink.Reply(agentlink.ERROR, "refused MONGODB-X509 for CN=alice"), b"",
     "refused MONGODB-X509"),
    (agentlink.Reply(agentlink.OK, answer=b"\x00\x01"), b"", "a MongoDB answer is 4"),
    (agentlink.Reply(agentlink.OK, answer=agentlink.mongo_answer(100)), b"",
     "maxMessageSizeBytes 100"),
    (agentlink.Reply(agentlink.OK, answer=agentlink.mongo_answer(1 << 20)), b"x",
     "nobody asked for"),
])
def test_a_mongodb_sign_in_that_fails_is_an_upstream_error(reply, after, match):
    with pytest.raises(UpstreamError, match=match):
        asyncio.run(_session(reply, after, _mongo))


def test_no_reachable_agent_is_an_upstream_error():
    async def main() -> None:
        link = _native.TLSContext(False, PROXY.cert_pem, PROXY.key_pem, CA_.pem,
                                  verify=_native.VERIFY_REQUIRED, alpn=[agentlink.ALPN])
        dead = Agent("a1", "gone", f"127.0.0.1:{free_port()}")
        engine = RemoteEngine("db", lambda: [dead], lambda: link, lambda **kw: "g")
        with pytest.raises(UpstreamError, match="no agent could be reached: gone at"):
            await _mysql(engine)
        with pytest.raises(UpstreamError, match="no agent could be reached"):
            await _mongo(engine)

    asyncio.run(main())


def test_the_link_encodings_are_bounded():
    assert agentlink.read_mysql_startup(agentlink.mysql_startup(0xFFFFFFFF, 255)) == (
        0xFFFFFFFF, 255)
    for bad in (b"", b"\x00" * 4, b"\x00" * 6):
        with pytest.raises(agentlink.LinkError):
            agentlink.read_mysql_startup(bad)
    assert agentlink.read_mongo_answer(agentlink.mongo_answer(48_000_000)) == 48_000_000
    with pytest.raises(agentlink.LinkError):
        agentlink.read_mongo_answer(agentlink.mongo_answer(-1))
