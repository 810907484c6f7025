"""The audit log: append-only structured events, stored and mirrored to the log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mwiproxy.auth.storage.base import AuditEvent, Storage

log = logging.getLogger("mwiproxy.audit")

# Event types (Teleport's names where it has one).
BOT_JOIN = "bot.join"
BOT_JOIN_FAILED = "bot.join.failed"
BOT_RENEW = "bot.renew"
BOT_RENEW_FAILED = "bot.renew.failed"
BOT_GENERATION_MISMATCH = "bot.generation_mismatch"
BOT_CREATE = "bot.create"
BOT_UPDATE = "bot.update"
BOT_DELETE = "bot.delete"
TOKEN_CREATE = "join_token.create"
TOKEN_DELETE = "join_token.delete"
CERT_CREATE = "cert.create"
CERT_DENIED = "cert.denied"
LOCK_CREATE = "lock.created"
LOCK_DELETE = "lock.deleted"
ROLE_CREATE = "role.created"
ROLE_DELETE = "role.deleted"
ACCESS_GRANTED = "db.access.granted"
ACCESS_DENIED = "db.access.denied"
SESSION_START = "db.session.start"
SESSION_END = "db.session.end"
AUTH_DENIED = "auth.denied"
AGENT_JOIN = "agent.join"
AGENT_JOIN_FAILED = "agent.join.failed"
AGENT_RENEW = "agent.renew"
AGENT_REGISTER = "agent.register"
AGENT_GOODBYE = "agent.goodbye"
AGENT_LOST = "agent.lost"
AGENT_GENERATION_MISMATCH = "agent.generation_mismatch"


class AuditLog:
    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock

    def emit(self, type: str, **fields: Any) -> int:
        now = self._clock()
        event_id = self._storage.append_audit(now, type, fields)
        log.info("%s", json.dumps({"event": type, "id": event_id, **fields}, default=str))
        return event_id

    def query(
        self, *, since: float | None = None, types: list[str] | None = None, limit: int = 1000
    ) -> list[AuditEvent]:
        return self._storage.query_audit(since=since, types=types, limit=limit)
