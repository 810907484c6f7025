"""A MySQL session's answered COM_QUERYs straight from its tap records, pure Python: the
twin of _auditenc.mysql_query_texts (tests/unit/native/test_myauditenc_differential.py
compares the two). A busy session's records are nearly all COM_QUERY requests and their
results; proxy/myqueryaudit.py hands a drain here and takes back, one at a time, each
record this leaves to it (the order of events stays the client's).

Records: csrc/mwi_myaudit.h, in pgaudit_py's layout (RECORD_HEAD, then per field its
FIELD_HEAD and bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .pgaudit_py import (
    FIELD_HEAD,
    HDR,
    NULL,
    RECORD_HEAD,
    ST_ERROR,
    STATUS_NAMES,
    TRUNCATED,
    UNTRACKED,
)

# what `statements` gives for a COM_QUERY's text: its fields (a dict, for the caller's
# other paths), the canonical text of those between `duration_ms` and `rows` (the keys
# sorted), and `truncated` as JSON ("true" / "false")
Statement = tuple[dict[str, Any], str, str]
Statements = Callable[[tuple[int, bytes], bool], Statement]
_Q, _R = ord("Q"), ord("R")


def mysql_query_texts(records: list[bytes], start: int, queries: dict[int, Statement],
                      cache: dict[tuple[bytes, int, bool], Statement],
                      statements: Statements, done: list[str]) -> int:
    """From records[start] on: a COM_QUERY request tracked (not UNTRACKED, its text not
    NULL) goes into `queries` (seq → what `cache` holds for (text, full length,
    truncated), else statements((full length, text), truncated), which may fill it); the
    result of one of those that did not fail (status not ST_ERROR) takes it out and
    appends its command's canonical text to `done`. Stops at the first other record
    (anything else, or a result whose query is not in `queries`) and says its index
    (len(records): none)."""
    for i in range(start, len(records)):
        raw = records[i]
        if type(raw) is not bytes or len(raw) < HDR:
            return i
        kind, flags, _, seq, status, _, rows, size, took = RECORD_HEAD.unpack_from(raw)
        if kind == _R:
            if status == ST_ERROR or status >= len(STATUS_NAMES):
                return i
            query = queries.pop(seq, None)
            if query is None:
                return i
            done.append(f'{{"bytes":{size},"command":"COM_QUERY","duration_ms":'
                        f'{round(took / 1e6, 3)!r},{query[1]},"rows":{rows},'
                        f'"status":"{STATUS_NAMES[status]}","truncated":{query[2]}}}')
        elif kind == _Q and not flags & UNTRACKED and len(raw) >= HDR + 8:
            full, kept = FIELD_HEAD.unpack_from(raw, HDR)
            if full == NULL or HDR + 8 + kept > len(raw):
                return i
            text, cut = raw[HDR + 8:HDR + 8 + kept], bool(flags & TRUNCATED)
            got = cache.get((text, full, cut))
            queries[seq] = got if got is not None else statements((full, text), cut)
        else:
            return i
    return len(records)
