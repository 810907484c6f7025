"""Agents that heartbeat to other cluster processes on a shared storage reach this one.

A thread re-reads the shared agent registry every REFRESH seconds (AgentService.refresh,
auth/agents.py), so the proxy's routing and `db ls` read a cache and never wait on the
storage from the event loop; the read also removes expired registrations and audits
their loss. With SQLite storage there is no other process and no feed.
"""

from __future__ import annotations

import logging
import threading

from mwiproxy.auth.agents import REFRESH, AgentService
from mwiproxy.auth.storage.base import Storage, StorageUnavailable

log = logging.getLogger("mwiproxy.auth.agent_feed")


class AgentFeed:
    def __init__(self, agents: AgentService, interval: float = REFRESH) -> None:
        self._agents = agents
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-feed", daemon=True)

    @classmethod
    def start_for(cls, agents: AgentService, storage: Storage) -> AgentFeed | None:
        if not storage.remote:
            return None
        feed = cls(agents)
        feed._thread.start()
        return feed

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._agents.refresh()
            except StorageUnavailable as e:  # the cache stays as it was meanwhile
                log.warning("agent feed: cannot read the agent registry: %s", e)
            except Exception:  # the feed must outlive any one bad read
                log.exception("agent feed: reading the agent registry failed")

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
