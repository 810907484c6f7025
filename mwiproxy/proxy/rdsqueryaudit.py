"""A Redis session's query audit: the relay's tap records (csrc/mwi_rdsaudit.h, read by
pgaudit_py.decode) become `db.session.query` events, one per command the client sent,
batched as PostgreSQL's (proxy/queryaudit.py).

Each carries `command` (the name, upper-cased), `argc`, `query` (the name) and `args`
per the session's parameter policy (omit, hash: sqlredact.param_digests, plain), the
first 16 arguments up to 256 bytes each (`args_truncated`), and `status: "read"`:
replies are not paired (pub/sub, MONITOR and CLIENT REPLY break the order), so a
command the inspector then refused (an AUTH as another user) is recorded too. Password
positions are `****` whatever the policy: every argument of AUTH, the two after HELLO's
AUTH, MIGRATE's AUTH (one) and AUTH2 (two), ACL SETUSER's `>`, `<`, `#` and `!` rules,
CONFIG SET requirepass / masterauth values (_native/rdsauditenc_py.secret_positions). An
inline command: its name only (`inline`).
"""

from __future__ import annotations

from typing import Any

from mwiproxy._native import pgaudit_decode as decode
from mwiproxy._native.pgaudit_py import PARAMS_OMITTED
from mwiproxy._native.rdsaudit_py import INLINE
from mwiproxy._native.rdsauditenc_py import MASK, secret_positions
from mwiproxy.proxy.queryaudit import QUERY, QueryAudit
from mwiproxy.wire.sqlredact import param_digests

__all__ = ["MASK", "RedisQueryAudit", "secret_positions"]


class RedisQueryAudit(QueryAudit):
    """One Redis session's records → events (the same constructor as QueryAudit)."""

    protocol = "redis"

    def on_records(self, records: list[bytes]) -> None:
        for raw in records:
            rec = decode(raw)
            if rec.kind == "K":
                self._command(rec)

    def _command(self, rec: Any) -> None:
        name = rec.fields[0][1] or b""
        shown = name.decode("utf-8", "replace").upper()
        info: dict[str, Any] = {"command": shown, "query": shown, "argc": rec.aux,
                                "status": "read"}
        if rec.flags & INLINE:
            self.emit(QUERY, **info, inline=True)
            return
        values = [v or b"" for _, v in rec.fields[1:]]
        secret = secret_positions(name, values)
        mode = self._policy.parameters
        if mode != "omit":
            args: list[str | None] = (param_digests(list(values), self._key) if mode == "hash"
                                      else [v.decode("utf-8", "replace") for v in values])
            info["args"] = [MASK if i in secret else v for i, v in enumerate(args)]
            cut = any(full > len(v or b"") for full, v in rec.fields[1:])
            if cut or rec.flags & PARAMS_OMITTED:
                info["args_truncated"] = True
        self.emit(QUERY, **info)
