"""A Redis session's query audit: the relay's tap records (csrc/mwi_rdsaudit.h) become
`db.session.query` events, each holding the commands of one drain of the relay's
records (at most MAX_COMMANDS, about MAX_TEXT characters), in the order the client sent
them: `commands` (a list) and `count`, with the session's fields (session, user, bot,
db_service, db_user, db_name, remote, protocol, session_id) once per event.

A Redis client sends tens of thousands of commands a second; one stored event per
command costs the audit store a row (and its index entries) each, more than relaying
the command. One event per batch keeps every command, in order, at a fraction of that.
`mwictl sessions show` lists them one per line again (cli/mwictl_sessions.py
commands_of).

Each command carries `command` (the name, upper-cased), `argc`, `query` (the name) and
`args` per the session's parameter policy (omit, hash: sqlredact.param_digests, plain),
the first 16 arguments up to 256 bytes each (`args_truncated`), and `status: "read"`:
replies are not paired (pub/sub, MONITOR and CLIENT REPLY break the order), so a
command the inspector then refused (an AUTH as another user) is recorded too. Password
positions are `****` whatever the policy (_native.rdsauditenc_py.secret_positions). An
inline command: its name only (`inline`). The fields are encoded natively, a batch per
call (_native.redis_query_texts), straight to the stored text.
"""

from __future__ import annotations

from typing import Any, cast

from mwiproxy._native import rdsauditenc_py, redis_query_texts
from mwiproxy._native.rdsauditenc_py import MASK, secret_positions
from mwiproxy.proxy.queryaudit import MAX_COMMANDS, MAX_TEXT, QueryAudit
from mwiproxy.wire.sqlredact import _DIGEST_HEX, DIGEST_PREFIX

__all__ = ["MASK", "MAX_COMMANDS", "MAX_TEXT", "RedisQueryAudit", "secret_positions"]


class RedisQueryAudit(QueryAudit):
    """One Redis session's records → events (the same constructor as QueryAudit).
    `events` counts commands recorded."""

    protocol = "redis"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame()  # the session's fields checked now, not at the first command

    def on_records(self, records: list[bytes]) -> None:
        mode = self._policy.parameters
        got = redis_query_texts(records, mode, self._key, DIGEST_PREFIX, _DIGEST_HEX, [])
        if not got:
            return
        if None in got:  # what the native encoder leaves to its Python twin (rare)
            commands = [raw for raw in records if raw[:1] == b"K"]
            got = [t if t is not None else
                   rdsauditenc_py.redis_query_texts([commands[i]], mode, self._key,
                                                    DIGEST_PREFIX, _DIGEST_HEX, [])[0]
                   or "{}" for i, t in enumerate(got)]  # (the twin gives a text for each)
        self.emit_commands(cast(list[str], got))
