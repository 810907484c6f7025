"""A Redis session's query-audit events straight from its tap records, pure Python: the
twin of _auditenc.redis_query_texts (csrc/mwi_rdsauditenc.c). Each command record
(csrc/mwi_rdsaudit.h) becomes the canonical JSON text (auditenc_py.canonical_fields) of
a command's fields (command_info), with the session's fixed fields when given
(proxy/rdsqueryaudit.py gives none: it puts a batch of commands in one event). Also
where the password positions of a command are decided (secret_positions).
"""

from __future__ import annotations

from typing import Any

from .auditenc_py import canonical_fields, hmac_digests
from .pgaudit_py import PARAMS_OMITTED, Record, decode
from .rdsaudit_py import INLINE

MASK = "****"
_AFTER = {b"HELLO": {b"AUTH": 2}, b"MIGRATE": {b"AUTH": 1, b"AUTH2": 2},
          b"CONFIG": {b"REQUIREPASS": 1, b"MASTERAUTH": 1}}


def secret_positions(name: bytes, args: list[bytes]) -> set[int]:
    """Which of `args` (the name not counted) hold a password."""
    name = name.upper()
    if name == b"AUTH":
        return set(range(len(args)))
    if name == b"ACL" and args and args[0].upper() == b"SETUSER":
        return {i for i, a in enumerate(args) if i >= 2 and a[:1] in (b">", b"<", b"#", b"!")}
    out: set[int] = set()
    after = _AFTER.get(name)
    if after is None:  # most commands: nothing to look for
        return out
    for i, a in enumerate(args):
        n = after.get(a.upper(), 0)
        out.update(range(i + 1, i + 1 + n))
    return out


def command_info(rec: Record, mode: str, key: bytes, prefix: str,
                 nhex: int) -> dict[str, Any]:
    """A command record's own event fields. `mode`: the parameter policy ("omit",
    "hash": hmac_digests(key, values, prefix, nhex), anything else: plain)."""
    name = rec.fields[0][1] or b""
    shown = name.decode("utf-8", "replace").upper()
    info: dict[str, Any] = {"command": shown, "query": shown, "argc": rec.aux,
                            "status": "read"}
    if rec.flags & INLINE:
        info["inline"] = True
        return info
    values = [v or b"" for _, v in rec.fields[1:]]
    secret = secret_positions(name, values)
    if mode != "omit":
        args: list[str | None] = (hmac_digests(key, list(values), prefix, nhex)
                                  if mode == "hash"
                                  else [v.decode("utf-8", "replace") for v in values])
        info["args"] = [MASK if i in secret else v for i, v in enumerate(args)]
        cut = any(full > len(v or b"") for full, v in rec.fields[1:])
        if cut or rec.flags & PARAMS_OMITTED:
            info["args_truncated"] = True
    return info


def redis_query_texts(records: list[bytes], mode: str, key: bytes, prefix: str, nhex: int,
                      who: list[tuple[str, Any]]) -> list[str | None]:
    """The event text of each command ('K') record of `records`, in order (records of
    other kinds: no entry): canonical_fields({**dict(who), **command_info(...)}).
    `who`: the session's fixed fields (plain JSON values: str, int, ...) in any order (a
    later pair wins, as in dict(); an event's own field wins over a fixed one).
    The native build may answer None for a record (the caller builds that event from
    command_info); this twin never does (unless `who` is not plain JSON)."""
    fixed = dict(who)
    out: list[str | None] = []
    for raw in records:
        rec = decode(raw)
        if rec.kind == "K":
            out.append(canonical_fields({**fixed, **command_info(rec, mode, key, prefix,
                                                                 nhex)}))
    return out
