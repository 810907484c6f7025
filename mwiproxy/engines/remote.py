"""A database served by a separate agent (`mwiproxy start --roles=db`), seen from the
cluster proxy: the same contract as the in-process PostgreSQL engine, carried over the
agent link (`wire/agentlink.py`).

The agents serving a database are those with a live heartbeat (`auth/agents.py`). Each
session tries them in random order and takes the first that answers, so several agents
can serve one database. The proxy's own identity (user CA, usage `mwi:proxy`) is the
client certificate; the agent must show a agent-CA certificate valid for the address it
registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from mwiproxy import _native
from mwiproxy.config.cluster import split_host_port
from mwiproxy.engines.base import CONNECT_TIMEOUT, UpstreamError, check_server_name
from mwiproxy.engines.postgres import Upstream, UpstreamRefused
from mwiproxy.identity.certs import Identity
from mwiproxy.relay.streams import BufferedReader, ByteStream, dial_tcp
from mwiproxy.wire import agentlink
from mwiproxy.wire import postgres as pg

log = logging.getLogger("mwiproxy.engines.remote")

LINK_TIMEOUT = 30.0


class Agent(Protocol):
    """Where an agent serving the database can be reached (a live registration)."""

    @property
    def host_id(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def addr(self) -> str: ...


class RemoteEngine:
    """One database service, reached through whichever of its agents answers."""

    def __init__(self, name: str, find_agents: Callable[[], Sequence[Agent]],
                 link_tls: Callable[[], _native.TLSContext]) -> None:
        self.name = name
        self._find_agents = find_agents
        self._link_tls = link_tls

    def agents(self) -> list[Agent]:
        found = list(self._find_agents())
        random.shuffle(found)
        return found

    async def _dial(self, agent: Agent) -> _native.TLSStream:
        host, port = split_host_port(agent.addr, min_port=1)
        sock = await dial_tcp(host, port)
        stream = _native.TLSStream(asyncio.get_running_loop(), self._link_tls(),
                                   sock.detach(), server_hostname=host)
        try:
            await stream.handshake()
            check_server_name(stream.peer_cert_der(), host)
        except BaseException:
            stream.close()
            raise
        return stream

    async def _open(self, hello: agentlink.Hello
                    ) -> tuple[_native.TLSStream, BufferedReader, agentlink.Reply]:
        agents = self.agents()
        if not agents:
            raise UpstreamError(f"database {self.name!r}: no agent serving it has sent a "
                                "heartbeat recently (is `mwiproxy start --roles=db` running?)")
        failures = []
        for agent in agents:
            try:
                stream = await asyncio.wait_for(self._dial(agent), CONNECT_TIMEOUT)
            except (OSError, TimeoutError, UpstreamError) as e:  # TLSError is an OSError
                failures.append(f"{agent.hostname or agent.host_id} at {agent.addr}: "
                                f"{e or 'timeout'}")
                continue
            try:
                await stream.write(hello.encode())
                reader = BufferedReader(stream)
                reply = await asyncio.wait_for(agentlink.read_reply(reader), LINK_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    agentlink.LinkError) as e:
                stream.close()
                raise UpstreamError(f"database {self.name!r}: the agent at {agent.addr} "
                                    f"failed: {e or 'timeout'}") from None
            return stream, reader, reply
        raise UpstreamError(f"database {self.name!r}: no agent could be reached: "
                            + "; ".join(failures))

    async def start(self, startup: bytes, db_user: str, client: ByteStream, *,
                    caller: Identity, db_name: str = "", remote: str = "",
                    session_id: int = 0) -> Upstream:
        hello = agentlink.Hello(agentlink.OP_SESSION, self.name, db_user, caller.cert_der,
                                db_name=db_name, startup=startup, remote=remote,
                                session_id=session_id)
        stream, reader, reply = await self._open(hello)
        try:
            if reply.status == agentlink.OK:
                await client.write(reply.answer + reader.leftover())
                key = pg.CancelKey(*reply.cancel_key) if reply.cancel_key else None
                return Upstream(stream, key)
            if reply.status == agentlink.REFUSED:
                await client.write(reply.answer)
                raise UpstreamRefused({"M": reply.message or "refused by the database"})
            raise UpstreamError(reply.message or f"the agent answered {reply.status}")
        except BaseException:
            stream.close()
            raise

    async def cancel(self, key: pg.CancelKey, db_user: str, *, caller: Identity) -> None:
        hello = agentlink.Hello(agentlink.OP_CANCEL, self.name, db_user, caller.cert_der,
                                cancel=(key.pid, key.secret))
        stream, _, reply = await self._open(hello)
        with contextlib.closing(stream):
            if reply.status != agentlink.OK:
                raise UpstreamError(reply.message or f"the agent answered {reply.status}")
