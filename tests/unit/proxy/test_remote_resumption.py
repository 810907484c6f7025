"""The cluster proxy's dial to a database agent (RemoteEngine._dial, the link TLS) resumes
from the second connection on and still checks the agent's server name (on the resumed
session too); a new link certificate (a new context) starts afresh."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest

from mwiproxy import _native
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.remote import RemoteEngine
from mwiproxy.wire import agentlink
from tests.unit.native.pki import CA, Issued

CA_ = CA("link CA")
AGENT = CA_.issue("agent", dns=["localhost"])
PROXY, RENEWED = CA_.issue("proxy.c"), CA_.issue("proxy.c renewed")


@dataclass(frozen=True)
class Agent:
    host_id: str
    hostname: str
    addr: str


class LinkServer:
    """An agent's link listener as dbagent/link.py builds it: native server context,
    client certificate required, the link ALPN; records the proxy certificate it sees."""

    def __init__(self) -> None:
        self.ctx = _native.TLSContext(True, AGENT.cert_pem, AGENT.key_pem, CA_.pem,
                                      verify=_native.VERIFY_REQUIRED, alpn=[agentlink.ALPN])
        self.seen: list[bytes | None] = []
        self.server: asyncio.AbstractServer | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Once every connection has ended (the clients closed them all)."""
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(asyncio.gather(*self.handlers), 30)

    async def _conn(self, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        sock: socket.socket = w.get_extra_info("socket")
        fd = sock.dup().detach()
        w.transport.abort()
        stream = _native.TLSStream(asyncio.get_running_loop(), self.ctx, fd)
        try:
            await stream.handshake()
            self.seen.append(stream.peer_cert_der())
            await stream.write(b"r")  # the "reply": the ticket goes out before it
            await stream.read(1)
        except OSError:
            pass
        finally:
            stream.close()


def _context(issued: Issued) -> _native.TLSContext:
    return _native.TLSContext(False, issued.cert_pem, issued.key_pem, CA_.pem,
                              verify=_native.VERIFY_REQUIRED, alpn=[agentlink.ALPN])


def test_the_link_resumes_per_agent_checks_the_name_and_follows_the_certificate():
    async def main() -> None:
        link = LinkServer()
        port = await link.start()
        current = {"ctx": _context(PROXY)}
        engine = RemoteEngine("db", lambda: [], lambda: current["ctx"],
                              grant_session=None)  # type: ignore[arg-type]  # no sessions here
        agent = Agent("a", "a", f"localhost:{port}")
        by_ip = Agent("a", "a", f"127.0.0.1:{port}")  # not a name in the agent's certificate

        async def dial(agent: Agent) -> bool:
            stream = await engine._dial(agent)  # the name check runs in there
            try:
                assert await stream.read(1) == b"r"
                return stream.session_reused()
            finally:
                await stream.aclose()

        assert [await dial(agent), await dial(agent)] == [False, True]
        with pytest.raises(UpstreamError, match="not valid for '127.0.0.1'"):
            await engine._dial(by_ip)
        current["ctx"] = _context(RENEWED)  # the link certificate renewed
        assert [await dial(agent), await dial(agent)] == [False, True]
        assert link.seen[:2] == [PROXY.der] * 2 and link.seen[-2:] == [RENEWED.der] * 2
        await link.stop()

    asyncio.run(main())
