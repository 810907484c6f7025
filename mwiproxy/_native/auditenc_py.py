"""The audit log's per-event encodings, pure-Python twin of _auditenc.pyx
(csrc/mwi_auditenc.c): the canonical JSON of an event's fields when they are plain JSON,
and the hash-chain links of a batch (auth/storage/chain.py is their one user and says
what the chain is; the audit writer's thread runs these once per event); and the keyed
digests of query parameters (wire/sqlredact.param_digests says what they are).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

# (id, time, type, fields text, prev_hash, hash, session): a row as the stores insert it
ChainRow = tuple[int, float, str, str, str, str, "str | None"]

_LEN = struct.Struct(">Q")  # a part's length before it, in link_hash
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})
PLAIN_DEPTH = 8  # deeper (or a cycle): not plain


def canonical_fields(fields: Any) -> str | None:
    """Canonical JSON (sorted keys, no spaces, ASCII only) of `fields` when it is a dict
    of exact JSON types (str keys; str, int, float, bool, None, lists, tuples and dicts of
    them, nested less than PLAIN_DEPTH deep): every event the proxies emit. None for
    anything else (the caller's general path)."""
    if type(fields) is not dict or not _STR.issuperset(map(type, fields)):
        return None
    if not _SCALARS.issuperset(map(type, fields.values())) and \
            not all(_plain_value(v, 1) for v in fields.values()):
        return None
    return _CANONICAL.encode(fields)


def _plain_value(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= PLAIN_DEPTH:
        return False
    if kind is list or kind is tuple:
        return all(_plain_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain_value(v, depth + 1) for k, v in value.items())
    return False


def link_hash(prev_hash: str, event_id: int, time: float, type: str, text: str) -> str:
    """sha256 over the previous hash (32 raw bytes) and the event's parts, each
    length-prefixed (8 bytes, big-endian), as hex."""
    a, b = str(event_id).encode(), repr(float(time)).encode()
    c, d = type.encode(), text.encode()
    return hashlib.sha256(b"".join((
        bytes.fromhex(prev_hash), _LEN.pack(len(a)), a, _LEN.pack(len(b)), b,
        _LEN.pack(len(c)), c, _LEN.pack(len(d)), d))).hexdigest()


def chain_rows(prev_hash: str, top: int,
               events: list[tuple[float, str, str, str | None]]) -> list[ChainRow]:
    """The rows of `events` (time, type, fields text, session) linked in order after the
    event `top` whose hash is `prev_hash`: ids top+1, top+2, ..."""
    rows: list[ChainRow] = []
    for time, type_, text, session in events:
        top += 1
        h = link_hash(prev_hash, top, time, type_, text)
        rows.append((top, time, type_, text, prev_hash, h, session))
        prev_hash = h
    return rows


def hmac_digests(key: bytes, values: list[bytes | None], prefix: str,
                 nhex: int) -> list[str | None]:
    """Each value's HMAC-SHA256 under `key`, as `prefix` + its first `nhex` hex digits;
    None stays None."""
    if not values:
        return []
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out: list[str | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        h = keyed.copy()
        h.update(value)
        out.append(prefix + h.hexdigest()[:nhex])
    return out
