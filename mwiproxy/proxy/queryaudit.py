"""A PostgreSQL session's query audit: the relay's tap records (csrc/mwi_pgaudit.h, read
by pgaudit_py.decode) become audit events, queued to the audit writer (asynchronous,
batched: nothing here waits on the store).

Requests are told when they are read (`db.session.postgres.statements.parse|bind|
execute|close`, `db.session.postgres.function`); a statement's outcome when the server
finished it: `db.session.query` (a simple Query, or an Execute with its prepared
statement's text and its Bind's parameters) with rows, bytes, duration and command tag,
or `db.session.query.failed` with the SQLSTATE and the server's message (a Parse, Bind
or Close that failed too). A malformed message closes the session
(`db.session.malformed_packet`). Records the relay dropped (the loop fell behind) are
audited once, at the end, as `audit.query.dropped`, counted in a metric and logged at
most once a minute. Statements are redacted (sqlredact.redact_statement), parameters
written per the session's policy (omit, hash: sqlredact.param_digests, plain).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from mwiproxy._native import pgaudit_decode
from mwiproxy._native.pgaudit_py import (
    BAD_NAMES,
    PARAMS_OMITTED,
    ST_ERROR,
    STATUS_NAMES,
    UNTRACKED,
    Record,
)
from mwiproxy.auth.rbac import QueryAuditPolicy, query_audit_policy
from mwiproxy.auth.storage.base import EncodedFields, Storage
from mwiproxy.auth.storage.chain import fields_text
from mwiproxy.wire.sqlredact import param_digests, redact_statement

__all__ = ["QueryAudit", "QueryAuditPolicy", "query_audit_policy"]

log = logging.getLogger("mwiproxy.proxy.queryaudit")

QUERY = "db.session.query"
QUERY_FAILED = "db.session.query.failed"
PARSE = "db.session.postgres.statements.parse"
BIND = "db.session.postgres.statements.bind"
EXECUTE = "db.session.postgres.statements.execute"
CLOSE = "db.session.postgres.statements.close"
FUNCTION = "db.session.postgres.function"
MALFORMED = "db.session.malformed_packet"
DROPPED = "audit.query.dropped"

MAX_NAMES = 1000  # prepared statements and portals remembered per session
MAX_COMMANDS = 100  # commands per batched query event (Redis, MySQL)
MAX_TEXT = 64 * 1024  # characters of commands per batched event (one may pass it alone)
_SLOT = '"commands":[],"count":0'
DROP_LOG_INTERVAL = 60.0
# parameter digests: the cluster's key (param_key: kept in storage, so digests compare
# across restarts and cluster processes); a process key only where none is given
_PROCESS_KEY = os.urandom(32)
PARAM_KEY_META = "query_audit_param_key"


def param_key(storage: Storage) -> bytes:
    """The cluster's HMAC key for parameter digests, made once and kept in the storage's
    meta (re-read after writing, so processes racing to make it settle on one)."""
    stored = storage.get_meta(PARAM_KEY_META)
    if stored is None:
        storage.set_meta(PARAM_KEY_META, os.urandom(32).hex())
        stored = storage.get_meta(PARAM_KEY_META)
    return bytes.fromhex(stored or "") or _PROCESS_KEY

Emit = Callable[..., None]
EmitMany = Callable[[str, list[EncodedFields]], None]


class _DropLog:
    """Drops logged at most once per interval, with the count since the last line."""

    def __init__(self) -> None:
        self.pending = 0
        self.last = 0.0

    def add(self, n: int) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.last >= DROP_LOG_INTERVAL:
            log.warning("query audit fell behind: %d record(s) dropped since the last report "
                        "(audit.query.dropped events say which sessions)", self.pending)
            self.pending, self.last = 0, now


_drops = _DropLog()


def _text(field: tuple[int, bytes | None]) -> str:
    return (field[1] or b"").decode("utf-8", "replace")


class RedactedTexts:
    """Statements redacted once each: the same texts come again and again (prepared or
    not), per engine's redactor. Bounded: cleared when full. Shared by the sessions of
    a process (one instance per engine)."""

    def __init__(self, redact: Callable[[str], tuple[str, bool]], size: int = 512) -> None:
        self._redact = redact
        self._size = size
        self._done: dict[bytes, tuple[str, bool]] = {}

    def __call__(self, text: bytes) -> tuple[str, bool]:
        done = self._done.get(text)
        if done is None:
            if len(self._done) >= self._size:
                self._done.clear()
            done = self._done[text] = self._redact(text.decode("utf-8", "replace"))
        return done


class QueryAudit:
    """One session's records → events. `who`: the fields every event carries (session,
    identity, db_user, db_name, ...); `emit(type, **fields)`: the audit log's;
    `emit_many(type, [EncodedFields])`: its emit_many, for a batch already encoded
    (without one, each is emitted as a dict)."""

    protocol = "postgres"
    redacted = RedactedTexts(redact_statement)  # the engine's redactor, cached

    def __init__(self, emit: Emit, who: dict[str, Any], policy: QueryAuditPolicy, *,
                 wait: bool = False, key: bytes | None = None,
                 on_dropped: Callable[[int], None] = lambda n: None,
                 emit_many: EmitMany | None = None) -> None:
        self._emit = emit
        self._emit_many = emit_many or self._emit_each
        self._who = who
        self._policy = policy
        self.wait = wait
        self._key = key or _PROCESS_KEY
        self._on_dropped = on_dropped
        self.on_malformed: Callable[[str], None] = lambda reason: None
        self._statements: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._portals: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pending: dict[int, tuple[str, dict[str, Any]]] = {}
        self._frame: tuple[str, str, str | None] | None = None
        self.events = 0

    # -- the relay's side -------------------------------------------------------------

    def on_records(self, records: list[bytes]) -> None:
        decode, handlers = pgaudit_decode, _HANDLERS
        for raw in records:
            rec = decode(raw)
            handler = handlers.get(rec.kind)
            if handler is not None:
                handler(self, rec)

    def ended(self, dropped: int) -> None:
        """The relay is done; `dropped`: its records that never reached us."""
        if dropped:
            self.emit(DROPPED, count=dropped)
            self._on_dropped(dropped)
            _drops.add(dropped)

    # -- events -----------------------------------------------------------------------

    def emit(self, type_: str, **fields: Any) -> None:
        self.events += 1
        self._emit(type_, **self._who, **fields)

    def _emit_each(self, type_: str, many: list[EncodedFields]) -> None:
        for fields in many:
            self._emit(type_, **fields.as_dict())

    def frame(self) -> tuple[str, str, str | None]:
        """A batched event's text around its commands (made once: the session's fields
        with `commands` and `count`, canonically encoded) and its session."""
        if self._frame is None:
            if "commands" in self._who or "count" in self._who:
                raise ValueError("the session's fields may not hold `commands` or `count`")
            head, _, tail = fields_text({**self._who, "commands": [], "count": 0}
                                        ).partition(_SLOT)
            session = self._who.get("session")
            self._frame = (head + '"commands":[', tail,
                           session if isinstance(session, str) else None)
        return self._frame

    def emit_commands(self, texts: list[str]) -> None:
        """`db.session.query` events holding commands in order (`texts`: each command's
        own fields, canonically encoded): at most MAX_COMMANDS, about MAX_TEXT
        characters each, with the session's fields once (mwictl_sessions.commands_of
        lists them one by one again). One stored row per command costs the audit store
        more than relaying a short command does."""
        if not texts:
            return
        head, tail, session = self.frame()
        many: list[EncodedFields] = []
        for first in range(0, len(texts), MAX_COMMANDS):
            part = texts[first:first + MAX_COMMANDS]
            if sum(map(len, part)) + len(part) <= MAX_TEXT:  # nearly always: one event
                bounds = [0, len(part)]
            else:  # long commands: cut before the one that would pass MAX_TEXT
                bounds, size = [0], 0
                for i, text in enumerate(part):
                    if i > bounds[-1] and size + len(text) > MAX_TEXT:
                        bounds.append(i)
                        size = 0
                    size += len(text) + 1
                bounds.append(len(part))
            for start, end in pairwise(bounds):
                chunk = part[start:end]  # the event's text in one join: one copy
                chunk[0] = head + chunk[0]
                chunk[-1] = f'{chunk[-1]}],"count":{end - start}{tail}'
                many.append(EncodedFields(",".join(chunk), session))
        self.events += len(texts)
        self._emit_many(QUERY, many)

    def _statement(self, field: tuple[int, bytes | None], truncated: bool) -> dict[str, Any]:
        query, redacted = self.redacted(field[1] or b"")
        return {"query": query, "query_redacted": redacted,
                "truncated": truncated and field[0] > len(field[1] or b""),
                "query_len": field[0]}

    def _parameters(self, formats: bytes, values: tuple[tuple[int, bytes | None], ...],
                    omitted: bool) -> dict[str, Any]:
        mode = self._policy.parameters
        if mode == "omit":
            return {}
        out = param_digests([value for _, value in values], self._key) if mode == "hash" \
            else self._plain(formats, values)
        cut = any(v is not None and full > len(v) for full, v in values)
        return {"parameters": out, **({"parameters_truncated": True} if cut or omitted
                                      else {})}

    @staticmethod
    def _plain(formats: bytes, values: tuple[tuple[int, bytes | None], ...]
               ) -> list[str | None]:
        """Parameters as sent: text as text, binary as \\x hex (per the format codes)."""
        codes = [int.from_bytes(formats[i:i + 2], "big") for i in range(0, len(formats), 2)]
        out: list[str | None] = []
        for i, (_, value) in enumerate(values):
            if value is None:
                out.append(None)
            else:
                binary = (codes[0] if len(codes) == 1 else codes[i] if i < len(codes) else 0)
                out.append("\\x" + value.hex() if binary else
                           value.decode("utf-8", "replace"))
        return out

    # -- requests ---------------------------------------------------------------------

    def _query(self, rec: Record) -> None:
        info = self._statement(rec.fields[0], rec.truncated)
        self._track(rec, "Q", info)

    def _parse(self, rec: Record) -> None:
        name = _text(rec.fields[0])
        info = self._statement(rec.fields[1], rec.truncated)
        self._remember(self._statements, name, info)
        self.emit(PARSE, statement_name=name, **info)
        self._track(rec, "P", {"statement_name": name, **info})

    def _bind(self, rec: Record) -> None:
        portal, name = _text(rec.fields[0]), _text(rec.fields[1])
        params = self._parameters(rec.fields[2][1] or b"", rec.fields[3:],
                                  bool(rec.flags & PARAMS_OMITTED))
        self._remember(self._portals, portal, {"statement_name": name, **params})
        self.emit(BIND, statement_name=name, portal_name=portal, **params)
        self._track(rec, "B", {"statement_name": name, "portal_name": portal,
                               **self._statements.get(name, {}), **params})

    def _execute(self, rec: Record) -> None:
        portal = _text(rec.fields[0])
        bound = self._portals.get(portal, {})
        name = bound.get("statement_name", "")
        self.emit(EXECUTE, statement_name=name, portal_name=portal)
        self._track(rec, "E", {"statement_name": name, "portal_name": portal,
                               **self._statements.get(name, {}), **{
                                   k: v for k, v in bound.items() if k != "statement_name"}})

    def _close(self, rec: Record) -> None:
        name = _text(rec.fields[0])
        which = "portal_name" if rec.aux == ord("P") else "statement_name"
        (self._portals if rec.aux == ord("P") else self._statements).pop(name, None)
        self.emit(CLOSE, **{which: name})
        self._track(rec, "C", {which: name})

    def _function(self, rec: Record) -> None:
        params = self._parameters(rec.fields[0][1] or b"", rec.fields[1:],
                                  bool(rec.flags & PARAMS_OMITTED))
        self.emit(FUNCTION, function_oid=rec.aux, **params)

    def _track(self, rec: Record, kind: str, info: dict[str, Any]) -> None:
        if rec.flags & UNTRACKED:  # too many in flight: no result will come
            if kind in ("Q", "E"):
                self.emit(QUERY, **info, status="untracked")
            return
        self._pending[rec.seq] = (kind, info)

    @staticmethod
    def _remember(table: OrderedDict[str, dict[str, Any]], name: str,
                  info: dict[str, Any]) -> None:
        table[name] = info
        table.move_to_end(name)
        while len(table) > MAX_NAMES:
            table.popitem(last=False)

    # -- results ----------------------------------------------------------------------

    def _result(self, rec: Record) -> None:
        pending = self._pending.pop(rec.seq, None)
        if pending is None:
            return
        kind, info = pending
        failed = rec.aux == ST_ERROR
        if kind == "F" or (kind in "PBC" and not failed):
            return
        fields = rec.fields
        if kind == "P":
            info = {k: v for k, v in info.items() if k != "portal_name"}
        # one dict per event: the fields go to the writer as given (emit's kwargs)
        self.events += 1
        if failed:
            self._emit(QUERY_FAILED, **self._who, **info, rows=rec.n1, bytes=rec.n2,
                       duration_ms=round(rec.n3 / 1e6, 3), command_tag=_text(fields[0]),
                       status=STATUS_NAMES[rec.aux], sqlstate=_text(fields[1]),
                       error=_text(fields[2]))
        else:
            self._emit(QUERY, **self._who, **info, rows=rec.n1, bytes=rec.n2,
                       duration_ms=round(rec.n3 / 1e6, 3), command_tag=_text(fields[0]),
                       status=STATUS_NAMES[rec.aux])

    def _malformed(self, rec: Record) -> None:
        side, why = rec.aux >> 8, rec.aux & 0xFF
        reason = BAD_NAMES.get(why, "malformed")
        self.emit(MALFORMED, reason=reason, offset=rec.n1,
                  side="client" if side == 0 else "server")
        self.on_malformed(reason)


_HANDLERS: dict[str, Callable[[QueryAudit, Record], None]] = {
    "Q": QueryAudit._query, "P": QueryAudit._parse, "B": QueryAudit._bind,
    "E": QueryAudit._execute, "C": QueryAudit._close, "F": QueryAudit._function,
    "R": QueryAudit._result, "M": QueryAudit._malformed,
}
