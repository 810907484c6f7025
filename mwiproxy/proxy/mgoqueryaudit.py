"""A MongoDB session's query audit: the relay's tap records (csrc/mwi_mgoaudit.h, read by
_native.pgaudit_decode) become audit events, batched as PostgreSQL's (proxy/queryaudit.py).

Each client message becomes, when its reply came, `db.session.query` (or
`db.session.query.failed`: `ok` false, writeErrors, a legacy QueryFailure, with
`error_code` and `error`): `command` (the body's first key; `<compressed>` for
OP_COMPRESSED, never decompressed; `<unparsed>` when the body could not be walked),
`database` (`$db`, or OP_QUERY's namespace), `collection` (the first key's value when a
string), `opcode`, `request_id`, and the command document: by default its shape (every
value replaced by its BSON type, `query_redacted: true`) plus, under the `hash`
parameter policy, `document_digest` (sqlredact.param_digest of the recorded bytes);
under `plain`, relaxed extended JSON of it. Either is bounded at 16 KiB of the document
(`truncated`, `query_len`: its full size). Authentication and user commands (saslStart,
saslContinue, authenticate, createUser, updateUser, a speculativeAuthenticate, ...) never
carry their document: the tap does not copy it. The result: `status`, `duration_ms`,
`bytes` (the reply's), `rows` (`n`, or the cursor batch's documents) when the reply
says. A message with no reply (moreToCome, legacy fire-and-forget) is recorded at once
(`status: "untracked"`); one the proxy answered itself (a refusal) `unanswered`. A
message of impossible length: `db.session.malformed_packet` (the inspector ends the
session).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable
from typing import Any

from mwiproxy._native import pgaudit_decode as decode
from mwiproxy._native.mgoaudit_py import DOC_CAP, ROWS, SECRET, UNPARSED, value_size
from mwiproxy._native.pgaudit_py import BAD_NAMES, ST_ERROR, UNTRACKED, Record
from mwiproxy.proxy.queryaudit import MALFORMED, QUERY, QUERY_FAILED, QueryAudit
from mwiproxy.wire.sqlredact import param_digest

MAX_DEPTH = 32
STATUS = {0: "ok", 1: "error", 5: "unfinished", 6: "unanswered"}
OPCODES = {1: "OP_REPLY", 2001: "OP_UPDATE", 2002: "OP_INSERT", 2004: "OP_QUERY",
           2005: "OP_GET_MORE", 2006: "OP_DELETE", 2007: "OP_KILL_CURSORS",
           2012: "OP_COMPRESSED", 2013: "OP_MSG"}
COMPRESSORS = {0: "noop", 1: "snappy", 2: "zlib", 3: "zstd"}
_TYPES = {0x01: "double", 0x02: "string", 0x03: "object", 0x04: "array", 0x05: "binData",
          0x06: "undefined", 0x07: "objectId", 0x08: "bool", 0x09: "date", 0x0A: "null",
          0x0B: "regex", 0x0C: "dbPointer", 0x0D: "javascript", 0x0E: "symbol",
          0x0F: "javascriptWithScope", 0x10: "int", 0x11: "timestamp", 0x12: "long",
          0x13: "decimal", 0x7F: "maxKey", 0xFF: "minKey"}
_I32, _I64, _F64, _U32 = struct.Struct("<i"), struct.Struct("<q"), struct.Struct("<d"), \
    struct.Struct("<I")


class _Cut(Exception):
    """The recorded document ends here (it was cut at the cap, or is malformed)."""


def _document(b: bytes, pos: int, depth: int, shape: bool, array: bool) -> Any:
    """The document at b[pos] as JSON-able values, as far as b goes (_Cut past there:
    the caller keeps what was read, in `partial`)."""
    out: Any = [] if array else {}
    if pos + 4 > len(b):
        raise _Cut(out)
    end = pos + _I32.unpack_from(b, pos)[0] - 1
    if depth >= MAX_DEPTH:
        return "<nested>"
    at = pos + 4
    while at < end:
        if at >= len(b):
            raise _Cut(out)
        ty = b[at]
        nul = b.find(b"\0", at + 1, min(end, len(b)))
        if nul < 0:
            raise _Cut(out)
        name = b[at + 1:nul].decode("utf-8", "replace")
        try:
            value, at = _value(b, ty, nul + 1, end, depth, shape)
        except _Cut as c:
            if array:
                out.append(c.args[0])
            else:
                out[name] = c.args[0]
            raise _Cut(out) from None
        if array:
            out.append(value)
        else:
            out[name] = value
    if end >= len(b):  # its closing NUL was not recorded
        raise _Cut(out)
    return out


def _value(b: bytes, ty: int, v: int, end: int, depth: int, shape: bool) -> tuple[Any, int]:
    size = value_size(ty, b, v, len(b), end - v)
    if size < 0 or v + size > len(b):
        if ty in (0x03, 0x04) and size != -1:
            _document(b, v, depth + 1, shape, ty == 0x04)  # raises _Cut with what it read
        raise _Cut("…")
    nxt = v + size
    if ty in (0x03, 0x04):
        return _document(b, v, depth + 1, shape, ty == 0x04), nxt
    if shape:
        return f"<{_TYPES.get(ty, hex(ty))}>", nxt
    if ty == 0x01:
        d = _F64.unpack_from(b, v)[0]
        return (d if math.isfinite(d) else {"$numberDouble": str(d)}), nxt
    if ty in (0x02, 0x0D, 0x0E):
        text = b[v + 4:nxt - 1].decode("utf-8", "replace")
        return (text if ty == 0x02 else {"$code" if ty == 0x0D else "$symbol": text}), nxt
    if ty == 0x05:
        return {"$binary": {"base64": base64.b64encode(b[v + 5:nxt]).decode(),
                            "subType": f"{b[v + 4]:02x}"}}, nxt
    if ty == 0x07:
        return {"$oid": b[v:nxt].hex()}, nxt
    if ty == 0x08:
        return b[v] != 0, nxt
    if ty == 0x09:
        return {"$date": {"$numberLong": str(_I64.unpack_from(b, v)[0])}}, nxt
    if ty == 0x0A:
        return None, nxt
    if ty == 0x0B:
        pattern, options = b[v:nxt - 1].split(b"\0", 1)
        return {"$regularExpression": {"pattern": pattern.decode("utf-8", "replace"),
                                       "options": options.decode("utf-8", "replace")}}, nxt
    if ty == 0x10:
        return _I32.unpack_from(b, v)[0], nxt
    if ty == 0x11:
        return {"$timestamp": {"t": _U32.unpack_from(b, v + 4)[0],
                               "i": _U32.unpack_from(b, v)[0]}}, nxt
    if ty == 0x12:
        return _I64.unpack_from(b, v)[0], nxt
    if ty == 0x7F:
        return {"$maxKey": 1}, nxt
    if ty == 0xFF:
        return {"$minKey": 1}, nxt
    return {"$type": _TYPES.get(ty, hex(ty)), "$bytes": b[v:nxt].hex()}, nxt


def render(doc: bytes, shape: bool) -> tuple[str, bool]:
    """A recorded (maybe cut) BSON document as JSON, at most DOC_CAP characters: its
    shape (values → `<type>`) or its values; and whether it is whole."""
    try:
        value, whole = _document(doc, 0, 0, shape, False), True
    except _Cut as c:
        value, whole = c.args[0], False
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > DOC_CAP:
        return text[:DOC_CAP] + "…", False
    return text, whole


def _text(field: tuple[int, bytes | None]) -> str:
    return (field[1] or b"").decode("utf-8", "replace")


class MongoQueryAudit(QueryAudit):
    """One MongoDB session's records → events (the same constructor as QueryAudit)."""

    protocol = "mongodb"

    def on_records(self, records: list[bytes]) -> None:
        for raw in records:
            rec = decode(raw)
            handler = _HANDLERS.get(rec.kind)
            if handler is not None:
                handler(self, rec, raw)

    def _request(self, rec: Record, raw: bytes) -> None:
        db, cmd, coll, doc = rec.fields
        name = _text(cmd) or ("<unparsed>" if rec.flags & UNPARSED
                              else f"<{OPCODES.get(rec.aux, rec.aux)}>")
        info: dict[str, Any] = {"command": name, "database": _text(db),
                                "opcode": OPCODES.get(rec.aux, str(rec.aux)),
                                "request_id": rec.n3}
        if coll[0]:
            info["collection"] = _text(coll)
        if rec.aux == 2012:
            info["compressor"] = COMPRESSORS.get(rec.n2 & 0xFF, str(rec.n2 & 0xFF))
            info["original_opcode"] = OPCODES.get(rec.n2 >> 8, str(rec.n2 >> 8))
        if rec.flags & SECRET:
            info.update(query="", query_redacted=True, secret=True)
        elif doc[0]:
            mode = self._policy.parameters
            text, whole = render(doc[1] or b"", shape=mode != "plain")
            info.update(query=text, query_redacted=mode != "plain",
                        truncated=not whole or doc[0] > len(doc[1] or b""), query_len=doc[0])
            if mode == "hash":
                info["document_digest"] = param_digest(doc[1] or b"", self._key)
        if rec.flags & UNTRACKED:
            self.emit(QUERY, **info, status="untracked")
            return
        self._pending[rec.seq] = ("Q", info)

    def _answered(self, rec: Record, raw: bytes) -> None:
        pending = self._pending.pop(rec.seq, None)
        if pending is None:
            return
        info = pending[1]
        summary: dict[str, Any] = {"status": STATUS.get(rec.aux, str(rec.aux)),
                                   "duration_ms": round(rec.n3 / 1e6, 3), "bytes": rec.n2}
        if rec.flags & ROWS:
            summary["rows"] = rec.n1
        if rec.aux == ST_ERROR:
            code = struct.unpack_from("<i", raw, 12)[0]
            self.emit(QUERY_FAILED, **info, **summary, error_code=code,
                      error=_text(rec.fields[0]))
        else:
            self.emit(QUERY, **info, **summary)

    def _bad_message(self, rec: Record, raw: bytes) -> None:
        reason = BAD_NAMES.get(rec.aux & 0xFF, "malformed")
        self.emit(MALFORMED, reason=reason, offset=rec.n1, side="client")
        self.on_malformed(reason)


_HANDLERS: dict[str, Callable[[MongoQueryAudit, Record, bytes], None]] = {
    "Q": MongoQueryAudit._request, "R": MongoQueryAudit._answered,
    "M": MongoQueryAudit._bad_message,
}
