"""A MySQL session's query audit: the relay's tap records (csrc/mwi_myaudit.h, read by
pgaudit_py.decode and myaudit_py.code) become audit events, as PostgreSQL's do
(proxy/queryaudit.py: batched, nothing here waits on the store).

A command's outcome when the server answered it: in a `db.session.query` event, which
holds the commands that succeeded of one drain of the relay's records, in order
(`commands`, `count`, the session's fields once: QueryAudit.emit_commands, as Redis's):
each a COM_QUERY, a COM_STMT_EXECUTE with its prepared statement's text, or a
COM_INIT_DB, with rows (affected rows plus result-set rows), bytes (result-set rows),
duration and status; or, one event each, `db.session.query.failed` with the ERR code,
SQLSTATE and message (a PREPARE that failed too). Each command says its `command`. A
client at tens of thousands of statements a second paid one stored row each, more than
relaying the statement cost. Prepared statements: `db.session.mysql.statements.
prepare` (with the server's statement id and parameter count) and `...close`. An
EXECUTE's parameters (binary protocol, wire/mysqlparams: the types bound then, or
remembered from the statement's earlier execute) are written as PostgreSQL's Bind
parameters: per the session's policy (omit; hash: sqlredact.param_digests of each value's
text, the default; plain: the text, 256 bytes each), `parameters_truncated` when cut.
Statements are redacted by wire/mysqlredact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mwiproxy._native import mysql_query_texts
from mwiproxy._native import pgaudit_decode as decode
from mwiproxy._native.myaudit_py import code
from mwiproxy._native.pgaudit_py import ST_ERROR, STATUS_NAMES, UNTRACKED, Record
from mwiproxy.auth.storage.chain import fields_text
from mwiproxy.proxy.queryaudit import MAX_NAMES, QUERY_FAILED, QueryAudit, RedactedTexts
from mwiproxy.wire.mysqlparams import execute_params
from mwiproxy.wire.mysqlredact import redact_statement
from mwiproxy.wire.sqlredact import param_digests

PREPARE = "db.session.mysql.statements.prepare"
CLOSE = "db.session.mysql.statements.close"
PARAM_CAP = 256  # bytes of a parameter written under `plain`
_COMMANDS = {"Q": "COM_QUERY", "P": "COM_STMT_PREPARE", "E": "COM_STMT_EXECUTE",
             "I": "COM_INIT_DB", "C": "COM_STMT_CLOSE"}
CACHED_TEXT = 1024  # longer statements are made each time (the cache stays ~1.5 MB)


class StatementTexts:
    """A COM_QUERY's own fields (command, query, query_len, query_redacted, truncated)
    and the canonical text of those between `duration_ms` and `rows` (the keys sorted),
    made once per statement: a client sends the same texts again and again, and each
    answered one is then one f-string away from its stored text. Bounded: statements up
    to CACHED_TEXT bytes, cleared when full. Shared by the sessions of a process."""

    def __init__(self, redacted: RedactedTexts, size: int = 512) -> None:
        self._redacted = redacted
        self._size = size
        # (text, full length, truncated) → its Statement (read natively as well: cache)
        self.cache: dict[tuple[bytes, int, bool], tuple[dict[str, Any], str, str]] = {}

    def __call__(self, field: tuple[int, bytes | None], truncated: bool
                 ) -> tuple[dict[str, Any], str, str]:
        text = field[1] or b""
        key = (text, field[0], truncated)
        done = self.cache.get(key)
        if done is None:
            query, redacted = self._redacted(text)
            cut = truncated and field[0] > len(text)
            inner = fields_text({"query": query, "query_len": field[0],
                                 "query_redacted": redacted})[1:-1]
            done = ({"command": "COM_QUERY", "query": query, "query_redacted": redacted,
                     "truncated": cut, "query_len": field[0]},
                    inner, "true" if cut else "false")
            if len(text) <= CACHED_TEXT:
                if len(self.cache) >= self._size:
                    self.cache.clear()
                self.cache[key] = done
        return done


class MySQLQueryAudit(QueryAudit):
    """One MySQL session's records → events (the same constructor as QueryAudit)."""

    protocol = "mysql"
    redacted = RedactedTexts(redact_statement)
    statements = StatementTexts(redacted)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepared: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # COM_QUERYs awaiting their result (the common case, kept apart: see _answered)
        self._queries: dict[int, tuple[dict[str, Any], str, str]] = {}
        self._done: list[str] = []  # this drain's commands, encoded (for emit_commands)
        self.frame()  # the session's fields checked now, not at the first command

    def on_records(self, records: list[bytes]) -> None:
        """Answered COM_QUERYs (nearly every record of a busy session) natively, in
        order (_native.mysql_query_texts); each other record to its handler."""
        handlers, queries, statements, done = _HANDLERS, self._queries, self.statements, \
            self._done
        i, n = 0, len(records)
        while (i := mysql_query_texts(records, i, queries, statements.cache, statements,
                                      done)) < n:
            raw = records[i]
            rec = decode(raw)
            handler = handlers.get(rec.kind)
            if handler is not None:
                handler(self, rec, raw)
            i += 1
        self._flush()

    def emit(self, type_: str, **fields: Any) -> None:
        self._flush()  # the commands before this event stay before it
        super().emit(type_, **fields)

    def _flush(self) -> None:
        if self._done:
            self.emit_commands(self._done)
            self._done.clear()

    def _com_query(self, rec: Record, raw: bytes) -> None:
        if rec.flags & UNTRACKED:
            self._request(rec, raw)
        else:
            self._queries[rec.seq] = self.statements(rec.fields[0], rec.truncated)

    def _request(self, rec: Record, raw: bytes) -> None:
        info: dict[str, Any] = {"command": _COMMANDS[rec.kind]}
        if rec.kind in "QP":
            info.update(self._statement(rec.fields[0], rec.truncated))
        elif rec.kind == "I":
            info["schema"] = (rec.fields[0][1] or b"").decode("utf-8", "replace")
        elif rec.kind == "E":
            prepared = self._prepared.get(rec.aux, {})
            info.update({"statement_id": rec.aux, **{
                k: v for k, v in prepared.items() if k not in ("params", "types")}})
            info.update(self._execute_params(rec, prepared))
        if rec.flags & UNTRACKED:  # too many in flight: no result will come
            if rec.kind in "QEI":
                info["status"] = "untracked"
                self._done.append(fields_text(info))
            return
        self._pending[rec.seq] = (rec.kind, info)

    def _execute_params(self, rec: Record, prepared: dict[str, Any]) -> dict[str, Any]:
        mode = self._policy.parameters
        count = prepared.get("params")
        block = rec.fields[0][1] or b"" if rec.fields else b""
        if count is None:  # prepared before the audit saw it (or forgotten): unknown
            return {}
        values, types, cut = execute_params(block, count, prepared.get("types"))
        prepared["types"] = types
        if mode == "omit" or count == 0:
            return {}
        out: list[str | None]
        if mode == "hash":
            out = param_digests(values, self._key)
        else:
            out = [None if v is None else v[:PARAM_CAP].decode("utf-8", "replace")
                   for v in values]
            cut = cut or any(v is not None and len(v) > PARAM_CAP for v in values)
        cut = cut or len(values) < count or bool(rec.fields and rec.fields[0][0] > len(block))
        return {"parameters": out, **({"parameters_truncated": True} if cut else {})}

    def _closed(self, rec: Record, raw: bytes) -> None:
        self._prepared.pop(rec.aux, None)
        self.emit(CLOSE, command="COM_STMT_CLOSE", statement_id=rec.aux)

    def _answered(self, rec: Record, raw: bytes) -> None:
        """A result (a COM_QUERY's that succeeded: in on_records)."""
        query = self._queries.pop(rec.seq, None)
        pending = ("Q", dict(query[0])) if query is not None else \
            self._pending.pop(rec.seq, None)
        if pending is None:
            return
        kind, info = pending
        summary = {"rows": rec.n1, "bytes": rec.n2, "duration_ms": round(rec.n3 / 1e6, 3),
                   "status": STATUS_NAMES[rec.aux]}
        if rec.aux == ST_ERROR:
            _, sqlstate, error = ((f[1] or b"").decode("utf-8", "replace") for f in rec.fields)
            self.emit(QUERY_FAILED, **info, **summary, error_code=code(raw),
                      sqlstate=sqlstate, error=error)
        elif kind == "P":
            stmt = code(raw)
            self._prepared[stmt] = {**{k: v for k, v in info.items() if k != "command"},
                                    "params": rec.n1}
            self._prepared.move_to_end(stmt)
            while len(self._prepared) > MAX_NAMES:
                self._prepared.popitem(last=False)
            self.emit(PREPARE, **info, statement_id=stmt, params=rec.n1,
                      status=summary["status"],
                      duration_ms=summary["duration_ms"])
        else:
            info.update(summary)
            self._done.append(fields_text(info))


_HANDLERS: dict[str, Callable[[MySQLQueryAudit, Record, bytes], None]] = {
    "Q": MySQLQueryAudit._com_query, "P": MySQLQueryAudit._request,
    "E": MySQLQueryAudit._request, "I": MySQLQueryAudit._request,
    "C": MySQLQueryAudit._closed, "R": MySQLQueryAudit._answered,
}
