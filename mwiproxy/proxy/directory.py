"""Which engine serves a database service: the cluster's own (in-process, from
cluster.yaml) or, failing that, the agents that registered it with a heartbeat.

Looked up per connection, so an agent that stops heartbeating stops being served the
moment its registration expires, and a new one is served from its first heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Generic, TypeVar

from mwiproxy import _native
from mwiproxy.auth.agents import AgentRecord
from mwiproxy.auth.service import AuthService
from mwiproxy.engines.base import UpstreamError
from mwiproxy.engines.remote import RemoteEngine
from mwiproxy.metrics.cluster import NoopProxyMetrics

E = TypeVar("E")


class EngineDirectory(Generic[E]):
    """`protocols`: those of the agents' databases it serves; `label` the metrics'
    protocol label of their sessions."""

    def __init__(self, local: Mapping[str, E], auth: AuthService,
                 link_tls: Callable[[], _native.TLSContext],
                 protocols: Collection[str], metrics: NoopProxyMetrics | None = None,
                 label: str = "postgres") -> None:
        self._metrics = metrics or NoopProxyMetrics()
        self._label = label
        self._local = dict(local)
        self._auth = auth
        self._link_tls = link_tls
        self._protocols = protocols

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self._local or any(
            db.protocol in self._protocols for _, db in self._auth.agents.servers_for(name))

    def local(self, name: str) -> E | None:
        """The engine of a database served in this process (none for an agent's)."""
        return self._local.get(name)

    def sole_local(self) -> E | None:
        """The in-process engine when this process serves exactly one such database."""
        return next(iter(self._local.values())) if len(self._local) == 1 else None

    def serving(self, name: str) -> E | RemoteEngine:
        """The engine for a session that passed the access check; UpstreamError when
        the database went away since (its agent stopped heartbeating)."""
        engine = self.get(name)
        if engine is None:
            raise UpstreamError(f"database service {name!r} is no longer served")
        return engine

    def get(self, name: str) -> E | RemoteEngine | None:
        if name in self._local:
            return self._local[name]
        if name in self:
            return RemoteEngine(name, lambda: self._agents_for(name), self._link_tls,
                                self._auth.agents.grant_session, self._metrics,
                                protocol=self._label)
        return None

    def _agents_for(self, name: str) -> list[AgentRecord]:
        return [agent for agent, _ in self._auth.agents.servers_for(name)]
