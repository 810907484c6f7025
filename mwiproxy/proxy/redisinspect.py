"""What the Redis relay decides about the commands it holds (`relay/pipe.py` Inspect,
protocol "resp": AUTH, HELLO and RESET multibulks, and every inline command).

A session is signed in as one database user (the engine's AUTH); the client may not
become another:
- `AUTH <password>` is AUTH as `default`; `AUTH <user> <password>` names the user;
  `HELLO <protover> AUTH <user> <password> …` likewise: each may name only the session's
  user (re-authenticating as itself is harmless; redis-py and redis-cli send it when
  given a user).
- `RESET` signs the connection back in as `default`: refused unless that is the
  session's user.
- An inline command with unbalanced quotes is refused (redis-server would only answer a
  protocol error and hang up).
Each AUTH, HELLO (with AUTH) and RESET is audited as `db.session.redis.command`, the
password shown as `****` (it is never logged). A refusal ends the session with
`-ERR <why>`; `HELLO 3` (RESP3) passes untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from mwiproxy.auth import audit as events
from mwiproxy.auth.audit import AuditLog
from mwiproxy.engines.redis import DEFAULT_USER
from mwiproxy.proxy.sessions import Session
from mwiproxy.relay.pipe import Inspect
from mwiproxy.wire import redis as resp

log = logging.getLogger("mwiproxy.proxy.redis")

REDIS_COMMAND = events.SESSION_REDIS_COMMAND
MASK = "****"
VIOLATION = resp.error_reply("ERR Protocol error: a malformed or oversized command; "
                             "the session ends")


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


def judge(args: list[bytes], db_user: str) -> tuple[str, str]:
    """(the command as audited, the reason it is refused or ""), for a held command's
    arguments; ("", "") for a command that is neither checked nor audited."""
    name = _text(args[0]).upper() if args else ""
    if name == "AUTH":
        if len(args) not in (2, 3):
            return "", ""  # Redis answers a syntax error: nothing switches
        user = DEFAULT_USER if len(args) == 2 else _text(args[1])
        shown = f"AUTH {MASK}" if len(args) == 2 else f"AUTH {user} {MASK}"
        return shown, _other_user(user, db_user, "AUTH")
    if name == "HELLO":
        return _hello(args, db_user)
    if name == "RESET":
        why = "" if db_user == DEFAULT_USER else (
            f'RESET would sign this session in as "{DEFAULT_USER}"; it is signed in as '
            f'"{db_user}"')
        return "RESET", why
    return "", ""


def _hello(args: list[bytes], db_user: str) -> tuple[str, str]:
    shown, why, i = ["HELLO"], "", 1
    if len(args) > 1:
        shown.append(_text(args[1]))
        i = 2
    authed = False
    while i < len(args):
        option = _text(args[i]).upper()
        if option == "AUTH" and i + 2 < len(args):
            user = _text(args[i + 1])
            shown += ["AUTH", user, MASK]
            why = why or _other_user(user, db_user, "HELLO AUTH")
            authed, i = True, i + 3
        elif option == "SETNAME" and i + 1 < len(args):
            shown += ["SETNAME", _text(args[i + 1])]
            i += 2
        else:  # Redis answers a syntax error and switches nothing
            shown.append(_text(args[i]))
            i += 1
    return (" ".join(shown), why) if authed else ("", "")


def _other_user(user: str, db_user: str, what: str) -> str:
    if user == db_user:
        return ""
    return (f'{what} as "{user}" is not allowed: this session is signed in as database '
            f'user "{db_user}" (the certificate\'s); connect with a certificate for '
            f'"{user}" instead')


def command_inspector(audit: AuditLog, session: Session) -> Inspect:
    """The relay's inspector for one session."""
    return Inspect(protocol="resp", decide=_decider(audit, session),
                   violation_farewell=VIOLATION)


def _decider(audit: AuditLog, session: Session
             ) -> Callable[[bytes], Awaitable[bytes | None]]:
    async def decide(message: bytes) -> bytes | None:
        try:
            args = resp.parse_held(message)
        except resp.ProtocolError as e:
            log.warning("session %d: the relay held an unreadable command: %s",
                        session.session_id, e)
            return VIOLATION
        if args is None:
            return resp.error_reply("ERR Protocol error: unbalanced quotes in request")
        shown, why = judge(args, session.db_user)
        if shown:
            ident = session.identity
            audit.emit(REDIS_COMMAND, session_id=session.session_id,
                       session=session.audit_id, user=ident.user,
                       bot=ident.bot_name, db_service=session.service,
                       db_user=session.db_user, protocol="redis", command=shown,
                       allowed=not why, **({"reason": why} if why else {}))
        if why:
            log.info("session %d: refused %s: %s", session.session_id, shown, why)
            return resp.error_reply(f"ERR {why}")
        return None

    return decide
