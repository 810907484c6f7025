"""The audit log: append-only structured events, stored and mirrored to the log.

`emit` queues the event and returns at once; a writer thread (audit_writer.py) stores
queued events in batches, in order, and mirrors each to the log with its id once stored.
Readers (`query`, `verify`) flush first, so they see every event emitted before them.

Stored events form a hash chain (storage/chain.py) that `verify` walks; the cluster walks
it at every start and records a break it finds as an event of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mwiproxy.auth import audit_writer
from mwiproxy.auth.storage import chain
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
# a Redis command that could switch the session's user (AUTH, HELLO … AUTH, RESET)
SESSION_REDIS_COMMAND = "db.session.redis.command"
AUTH_DENIED = "auth.denied"
# a refused handshake (or identity-less certificate) at the cluster port's outer TLS
TLS_REFUSED = "tls.refused"
AGENT_JOIN = "agent.join"
AGENT_JOIN_FAILED = "agent.join.failed"
AGENT_RENEW = "agent.renew"
AGENT_REGISTER = "agent.register"
AGENT_GOODBYE = "agent.goodbye"
AGENT_LOST = "agent.lost"
AGENT_GENERATION_MISMATCH = "agent.generation_mismatch"
AGENT_SIGN_DENIED = "agent.sign.denied"
# CA rotation (auth/ca_rotation.py): each phase change, and each refused request
CA_ROTATE_PHASE = "ca.rotate.phase"
CA_ROTATE_REFUSED = "ca.rotate.refused"
# the log's own integrity
AUDIT_CHAIN_BROKEN = chain.CHAIN_BROKEN
AUDIT_CHAIN_MIGRATED = chain.CHAIN_MIGRATED
AUDIT_TRIGGERS_MISSING = "audit.triggers_missing"
# the writer's own reports: events dropped by a full queue, writes working again
AUDIT_OVERFLOW = audit_writer.OVERFLOW
AUDIT_RESUMED = audit_writer.RESUMED

# how long a reader waits for the writer before answering with what is stored
READ_FLUSH_WAIT = 10.0
# how long a shutdown keeps retrying to store what is queued
CLOSE_WAIT = 30.0


class AuditLog:
    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time,
                 max_pending: int = audit_writer.MAX_PENDING) -> None:
        self._storage = storage
        self.writer = audit_writer.AuditWriter(storage.append_audit_batch, clock,
                                               max_pending=max_pending)

    def emit(self, type: str, **fields: Any) -> None:
        """Queue the event; it is stored (and logged with its id) by the writer thread.
        The fields are encoded there: pass values nobody changes afterwards."""
        self.writer.put(type, fields)

    def emit_many(self, type: str, many: list[chain.EncodedFields]) -> None:
        """Queue events of one type whose fields are already encoded (a batch of a
        session's query audit): one call, one lock."""
        self.writer.put_many(type, many)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted before this call is stored (False: timeout)."""
        return self.writer.flush(timeout)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Store what is queued (retrying failures up to `timeout` s) and stop the
        writer. Before the storage closes."""
        lost = self.writer.close(timeout)
        if lost:
            log.error("%d audit event(s) could not be stored before exit (%s); each is "
                      "in this log above", lost, self.writer.stats.last_error)

    def _flush_for_reading(self) -> None:
        if not self.flush(READ_FLUSH_WAIT):
            log.warning("reading the audit log while %d event(s) wait to be stored (%s)",
                        self.writer.pending, self.writer.stats.last_error or "a slow disk")

    def query(
        self, *, since: float | None = None, types: list[str] | None = None,
        limit: int = 1000, session: str | None = None, before: int | None = None,
    ) -> list[AuditEvent]:
        self._flush_for_reading()
        return self._storage.query_audit(since=since, types=types, limit=limit,
                                         session=session, before=before)

    def verify(self, expect_head: str | None = None) -> chain.ChainReport:
        """Walk the whole chain; `expect_head` (HASH@ID) is a head exported earlier."""
        anchor = chain.parse_head(expect_head) if expect_head else None
        self._flush_for_reading()
        tail, events = self._storage.audit_chain()
        return chain.verify_chain(tail, events, anchor)

    def check_at_start(self) -> chain.ChainReport:
        """Walk the chain and record what opening the store found. A break is logged and
        audited once (breaks an earlier start reported are only logged), and never
        repaired: the new events chain onto the recorded head, so it stays visible.
        Synchronous: what it writes is stored before it returns."""
        report = self.verify()
        for b in report.breaks:
            seen = f" (reported by event {b.acknowledged_by})" if b.acknowledged_by else ""
            log.error("audit log chain broken at event %d: %s: %s%s",
                      b.event_id, b.reason, b.detail, seen)
        if report.reported and not report.breaks:
            log.warning("audit log: earlier starts reported breaks (events %s)",
                        ", ".join(str(e) for e, _ in report.reported))
        new = [b for b in report.breaks if b.acknowledged_by is None]
        if new:
            self.emit(AUDIT_CHAIN_BROKEN, broken_id=new[0].event_id, reason=new[0].reason,
                      detail=new[0].detail, broken_ids=list(dict.fromkeys(b.event_id for b in new)))
        missing = self._storage.audit_guards_missing()
        if missing:
            log.error("the audit log's append-only triggers were missing or altered (%s); "
                      "they have been re-created", ", ".join(missing))
            self.emit(AUDIT_TRIGGERS_MISSING, triggers=missing)
        if not self.flush(CLOSE_WAIT):
            log.error("the start-up check's audit events are not stored yet (%s); the writer "
                      "keeps trying", self.writer.stats.last_error)
        return report
