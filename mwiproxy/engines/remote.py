"""A database served by a separate agent (`mwiproxy start --roles=db`), seen from the
cluster proxy: the same contract as the in-process engines (PostgreSQL and Redis:
`start`, MySQL: `start_mysql`, MongoDB: `connect_mongo`), carried over the agent link
(`wire/agentlink.py`). The front end does the rest as for a database of its own.

The agents serving a database are those with a live heartbeat (`auth/agents.py`). Each
session tries them in random order and takes the first that answers, so several agents
can serve one database. The proxy's own identity (user CA, usage `mwi:proxy`) is the
client certificate; the agent must show a agent-CA certificate valid for the address it
registered. Each session's hello carries a single-use grant from the auth service, the
only thing that lets the agent have a database-client certificate (`auth/agent_grants.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from mwiproxy import _native
from mwiproxy.engines.base import CONNECT_TIMEOUT, UpstreamError, check_server_name
from mwiproxy.engines.mongodb import MongoUpstream
from mwiproxy.engines.mysql import Upstream as MySQLUpstream
from mwiproxy.engines.mysql import UpstreamRefused as MySQLRefused
from mwiproxy.engines.postgres import Upstream, UpstreamRefused
from mwiproxy.identity.certs import Identity
from mwiproxy.metrics.cluster import NoopProxyMetrics
from mwiproxy.relay.streams import BufferedReader, ByteStream, dial_tcp
from mwiproxy.wire import agentlink
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import postgres as pg
from mwiproxy.wire.addr import split_host_port

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


class GrantSession(Protocol):
    """The auth service's `AgentService.grant_session`: a single-use secret that lets
    agent host_id have one database-client certificate for this session's db_user."""

    def __call__(self, *, session_id: int, host_id: str, service: str, db_name: str,
                 db_user: str, user: str) -> str: ...


class RemoteEngine:
    """One database service, reached through whichever of its agents answers."""

    def __init__(self, name: str, find_agents: Callable[[], Sequence[Agent]],
                 link_tls: Callable[[], _native.TLSContext],
                 grant_session: GrantSession, metrics: NoopProxyMetrics | None = None,
                 protocol: str = "postgres") -> None:
        self.name = name
        self._metrics = metrics or NoopProxyMetrics()
        self._protocol = protocol
        self._find_agents = find_agents
        self._link_tls = link_tls
        self._grant_session = grant_session

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

    async def _open(self, hello_for: Callable[[Agent], agentlink.Hello]
                    ) -> tuple[_native.TLSStream, BufferedReader, agentlink.Reply]:
        """The link to the first agent that answers, after its hello (made for that
        agent: a session grant is good for the one agent it was sent to)."""
        agents = self.agents()
        if not agents:
            raise UpstreamError(f"database {self.name!r}: no agent serving it has sent a "
                                "heartbeat recently (is `mwiproxy start --roles=db` running?)")
        failures = []
        for agent in agents:
            started = time.monotonic()
            try:
                stream = await asyncio.wait_for(self._dial(agent), CONNECT_TIMEOUT)
            except (OSError, TimeoutError, UpstreamError) as e:  # TLSError is an OSError
                self._metrics.dial(self.name, self._protocol, None)
                failures.append(f"{agent.hostname or agent.host_id} at {agent.addr}: "
                                f"{str(e) or 'timeout'}")
                continue
            self._metrics.dial(self.name, self._protocol, time.monotonic() - started)
            try:  # off the loop: with a shared storage the grant is a storage write
                hello = await asyncio.to_thread(hello_for, agent)
            except BaseException:
                stream.close()
                raise
            try:
                await stream.write(hello.encode())
                reader = BufferedReader(stream)
                reply = await asyncio.wait_for(agentlink.read_reply(reader), LINK_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    agentlink.LinkError) as e:
                stream.close()
                raise UpstreamError(f"database {self.name!r}: the agent at {agent.addr} "
                                    f"failed: {str(e) or 'timeout'}") from None
            return stream, reader, reply
        raise UpstreamError(f"database {self.name!r}: no agent could be reached: "
                            + "; ".join(failures))

    async def _session(self, db_user: str, caller: Identity, *, startup: bytes = b"",
                       db_name: str = "", remote: str = "", session_id: int = 0
                       ) -> tuple[_native.TLSStream, BufferedReader, agentlink.Reply]:
        """A session's link, after the agent's reply (whatever its status)."""
        def hello_for(agent: Agent) -> agentlink.Hello:
            # the session is authorized (the proxy's checks ran before start), so the
            # agent may have a database-client certificate for it, and for nothing else
            grant = self._grant_session(session_id=session_id, host_id=agent.host_id,
                                        service=self.name, db_name=db_name,
                                        db_user=db_user, user=caller.user)
            return agentlink.Hello(agentlink.OP_SESSION, self.name, db_user,
                                   caller.cert_der, db_name=db_name, startup=startup,
                                   remote=remote, session_id=session_id, grant=grant)

        return await self._open(hello_for)

    def _failed(self, reply: agentlink.Reply) -> UpstreamError:
        return UpstreamError(reply.message or f"database {self.name!r}: the agent "
                             f"answered {reply.status}")

    async def start(self, startup: bytes, db_user: str, client: ByteStream, *,
                    caller: Identity, db_name: str = "", remote: str = "",
                    session_id: int = 0) -> Upstream:
        """PostgreSQL (`startup`: the client's StartupMessage, the answer to `client`)
        and Redis (no startup, no answer)."""
        stream, reader, reply = await self._session(
            db_user, caller, startup=startup, db_name=db_name, remote=remote,
            session_id=session_id)
        try:
            if reply.status == agentlink.OK:
                await client.write(reply.answer + reader.leftover())
                key = pg.CancelKey(*reply.cancel_key) if reply.cancel_key else None
                return Upstream(stream, key)
            if reply.status == agentlink.REFUSED:
                await client.write(reply.answer)
                raise UpstreamRefused({"M": reply.message or "refused by the database"})
            raise self._failed(reply)
        except BaseException:
            stream.close()
            raise

    async def start_mysql(self, db_user: str, db_name: str, client_caps: int, *,
                          charset: int, caller: Identity, remote: str = "",
                          session_id: int = 0) -> MySQLUpstream:
        """`MySQLEngine.start` in the agent: its OK for the client, or its ERR as
        MySQLRefused."""
        stream, reader, reply = await self._session(
            db_user, caller, startup=agentlink.mysql_startup(client_caps, charset),
            db_name=db_name, remote=remote, session_id=session_id)
        try:
            if reply.status == agentlink.OK and reply.answer[:1] == b"\x00":
                return MySQLUpstream(stream, reply.answer, reader.leftover())
            if reply.status == agentlink.REFUSED and reply.answer[:1] == b"\xff":
                raise MySQLRefused(reply.answer)
            if reply.status in (agentlink.OK, agentlink.REFUSED):
                raise UpstreamError(f"database {self.name!r}: the agent's {reply.status} "
                                    f"answer is not a MySQL OK/ERR packet")
            raise self._failed(reply)
        except BaseException:
            stream.close()
            raise

    async def connect_mongo(self, db_user: str, *, caller: Identity, db_name: str = "",
                            remote: str = "", session_id: int = 0) -> MongoUpstream:
        """`MongoEngine.connect` in the agent: authenticated as `CN=<db_user>`; the
        server's maxMessageSizeBytes comes back as the answer."""
        stream, reader, reply = await self._session(
            db_user, caller, db_name=db_name, remote=remote, session_id=session_id)
        try:
            if reply.status != agentlink.OK:
                raise self._failed(reply)
            try:
                size = agentlink.read_mongo_answer(reply.answer)
            except agentlink.LinkError as e:
                raise UpstreamError(f"database {self.name!r}: {e}") from None
            if leftover := reader.leftover():
                raise UpstreamError(f"database {self.name!r} sent {len(leftover)} bytes "
                                    "nobody asked for")
            return MongoUpstream(stream, min(size, mongo.MAX_MESSAGE))
        except BaseException:
            stream.close()
            raise

    async def cancel(self, key: pg.CancelKey, db_user: str, *, caller: Identity) -> None:
        hello = agentlink.Hello(agentlink.OP_CANCEL, self.name, db_user, caller.cert_der,
                                cancel=(key.pid, key.secret))
        # no grant: the agent cancels without a client certificate (PostgreSQL checks
        # only the cancel key)
        stream, _, reply = await self._open(lambda _agent: hello)
        with contextlib.closing(stream):
            if reply.status != agentlink.OK:
                raise UpstreamError(reply.message or f"the agent answered {reply.status}")
