"""The link between the cluster proxy and a database agent (`mwiproxy start --roles=db`).

One mutual-TLS connection per database session or cancel request. The proxy presents
a user-CA identity with usage `mwi:proxy`; the agent a server certificate from the agent
CA (which clients never trust, so an agent cannot pose as the proxy). The proxy has
already checked the session (RBAC, locks, expiry); the agent checks again
what it can check alone: the client's certificate chains to the user CA, is valid now,
and routes to a database this agent serves as the user and database asked for.

proxy → agent, one frame (the auth API's framing, `wire/frames.py`):
    {"op": "session", "service", "db_user", "db_name", "client_cert": base64 DER,
     "startup": base64, "remote", "session_id", "grant"}
    {"op": "cancel", "service", "db_user", "client_cert", "cancel": [pid, secret]}
`grant` is the secret of a single-use session grant from the auth service: the agent
shows it to the cluster to have the session's database-client certificate signed
(`auth/agent_grants.py`). A cancel needs none: it goes to the database without one.
agent → proxy, one frame then `answer` raw bytes:
    {"status": "ok" | "refused" | "denied" | "error", "message": str,
     "cancel_key": [pid, secret] | null, "answer": N}
`ok`: the N bytes are the database's startup answer up to ReadyForQuery, and from then
on the connection carries the session's bytes untouched in both directions. `refused`:
the database refused the startup; the N bytes are its ErrorResponse. `denied` / `error`:
the agent refused the session / could not reach the database; `message` says why.

What `startup` and an `ok` answer hold depends on the database's protocol:
- PostgreSQL / CockroachDB: the client's StartupMessage; the answer up to ReadyForQuery
  (a `refused` answer: the ErrorResponse);
- Redis: nothing either way (the agent signs in with AUTH as db_user);
- MySQL / MariaDB: `mysql_startup` (the client's capability flags and character set,
  which the agent's HandshakeResponse carries); the answer is the server's OK_Packet
  payload (a `refused` answer: its ERR_Packet payload, for the client as it is);
- MongoDB: nothing; the answer is `mongo_answer` (the server's maxMessageSizeBytes,
  from its `hello`, the bound of every client message the cluster proxy relays).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from mwiproxy.wire.frames import FrameError, decode_body, encode, frame_length

ALPN = "mwi-agent"
OP_SESSION = "session"
OP_CANCEL = "cancel"
OK, REFUSED, DENIED, ERROR = "ok", "refused", "denied", "error"
STATUSES = (OK, REFUSED, DENIED, ERROR)
MAX_ANSWER = 1 << 20
MAX_GRANT = 128  # the cluster's grants are 43 characters (auth/agent_grants.py)

__all__ = ["ALPN", "Hello", "LinkError", "Reply", "mongo_answer", "mysql_startup",
           "read_hello", "read_reply", "read_mongo_answer", "read_mysql_startup"]

_MYSQL_STARTUP = struct.Struct("<IB")  # capability flags, character set
_MONGO_ANSWER = struct.Struct("<i")  # maxMessageSizeBytes


class LinkError(Exception):
    """The other end broke the link protocol."""


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


@dataclass(frozen=True)
class Hello:
    op: str
    service: str
    db_user: str
    client_cert: bytes
    db_name: str = ""
    startup: bytes = b""
    cancel: tuple[int, int] | None = None
    remote: str = ""
    session_id: int = 0
    grant: str = field(default="", repr=False)  # a secret: kept out of logs

    def encode(self) -> bytes:
        msg: dict[str, Any] = {
            "op": self.op, "service": self.service, "db_user": self.db_user,
            "db_name": self.db_name, "client_cert": _b64(self.client_cert),
            "remote": self.remote, "session_id": self.session_id, "grant": self.grant}
        if self.op == OP_SESSION:
            msg["startup"] = _b64(self.startup)
        if self.cancel is not None:
            msg["cancel"] = list(self.cancel)
        return encode(msg)


@dataclass(frozen=True)
class Reply:
    status: str
    message: str = ""
    cancel_key: tuple[int, int] | None = None
    answer: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        head = encode({"status": self.status, "message": self.message,
                       "cancel_key": list(self.cancel_key) if self.cancel_key else None,
                       "answer": len(self.answer)})
        return head + self.answer


async def _read_message(reader: Reader) -> dict[str, Any]:
    try:
        return decode_body(await reader.readexactly(frame_length(await reader.readexactly(4))))
    except FrameError as e:
        raise LinkError(str(e)) from None


async def read_hello(reader: Reader) -> Hello:
    msg = await _read_message(reader)
    op = msg.get("op")
    if op not in (OP_SESSION, OP_CANCEL):
        raise LinkError(f"unknown op {op!r}")
    try:
        return Hello(
            op=op, service=_text(msg, "service"), db_user=_text(msg, "db_user"),
            db_name=_text(msg, "db_name"), client_cert=_unb64(msg, "client_cert"),
            startup=_unb64(msg, "startup") if op == OP_SESSION else b"",
            cancel=_pair(msg.get("cancel")), remote=_text(msg, "remote"),
            session_id=int(msg.get("session_id") or 0), grant=_grant(msg))
    except (TypeError, ValueError) as e:
        raise LinkError(f"malformed {op} request: {e}") from None


async def read_reply(reader: Reader) -> Reply:
    msg = await _read_message(reader)
    status = msg.get("status")
    size = msg.get("answer", 0)
    if status not in STATUSES or not isinstance(size, int) or not 0 <= size <= MAX_ANSWER:
        raise LinkError(f"malformed reply from the agent: status {status!r}, answer {size!r}")
    answer = await reader.readexactly(size) if size else b""
    return Reply(status, str(msg.get("message") or ""), _pair(msg.get("cancel_key")), answer)


def _text(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _grant(msg: dict[str, Any]) -> str:
    value = _text(msg, "grant")
    if len(value) > MAX_GRANT:
        raise ValueError(f"grant longer than {MAX_GRANT} characters")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(msg: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(_text(msg, key), validate=True)
    except binascii.Error as e:
        raise ValueError(f"{key}: {e}") from None


def _pair(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) for v in value)):
        raise LinkError(f"a cancel key must be two integers, not {value!r}")
    return int(value[0]), int(value[1])


def mysql_startup(capabilities: int, charset: int) -> bytes:
    """A MySQL session's `startup`: what the client's HandshakeResponse asked for."""
    return _MYSQL_STARTUP.pack(capabilities & 0xFFFFFFFF, charset & 0xFF)


def read_mysql_startup(data: bytes) -> tuple[int, int]:
    """(capability flags, character set) of a MySQL session's `startup`."""
    if len(data) != _MYSQL_STARTUP.size:
        raise LinkError(f"a MySQL startup is {_MYSQL_STARTUP.size} bytes, not {len(data)}")
    caps, charset = _MYSQL_STARTUP.unpack(data)
    return caps, charset


def mongo_answer(max_message_size: int) -> bytes:
    """A MongoDB session's `ok` answer: the server's maxMessageSizeBytes."""
    return _MONGO_ANSWER.pack(max_message_size)


def read_mongo_answer(data: bytes) -> int:
    if len(data) != _MONGO_ANSWER.size:
        raise LinkError(f"a MongoDB answer is {_MONGO_ANSWER.size} bytes, not {len(data)}")
    (size,) = _MONGO_ANSWER.unpack(data)
    if size < 1024:  # as the engine itself would refuse it (engines/mongodb.py)
        raise LinkError(f"maxMessageSizeBytes {size} from the agent")
    return int(size)
