"""A MongoDB session's verdict on each client message the native relay holds (the
`decide` of `Inspect("mongodb", ...)`, relay/pipe.py).

The relay passes, with no Python, every OP_MSG whose `$db` is the session's database and
whose command is none of those decided here (csrc/mwi_inspect_mongo.c); everything else
comes here whole (at most the server's maxMessageSizeBytes): other databases (each asked
of the roles once per session, at most MAX_REMEMBERED of them), authentication commands
(refused: the proxy authenticates the connection itself), the handshake (compression
stripped: Replace), aggregate and mapReduce (their output database checked too), legacy
opcodes and OP_COMPRESSED (refused). A refused message is answered in the format it
expects (Answer: the session goes on) and never reaches the database. A cut session
(`cut`) answers every message with why, ending the session at the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mwiproxy.relay.pipe import Answer, Replace, Verdict
from mwiproxy.relay.streams import BufferedReader, ByteStream
from mwiproxy.wire import mongodb as mongo
from mwiproxy.wire import mongomsg
from mwiproxy.wire.mongomsg import ClientMessage

# databases one session may name (each decided once, then remembered)
MAX_REMEMBERED = 64
# refused messages audited one by one per session; the rest are counted (session end)
MAX_AUDITED = 16
AUTH_REFUSED = ("the cluster proxy authenticates this connection itself (MONGODB-X509 "
                "as the certificate's database user): {} is refused")
NO_COMPRESSION = "compression was not agreed: OP_COMPRESSED messages are refused"
NO_DATABASE = "the message names no database ($db)"
# a cut session answers the client's next message with why within this long, then ends
FAREWELL_TIMEOUT = 5.0
MAX_ANSWERS = 16  # messages answered with an error before hanging up
READ_CAP = 64 * 1024  # the largest message read from a client that is refused anyway


class MessageJudge:
    """One session's `decide`. `allowed(db)` answers "" or why not; `on_refused(message,
    why)` is told of the first MAX_AUDITED refusals. `held` and `refused` count the
    messages decided here (the rest passed natively)."""

    def __init__(self, max_message_size: int, *, allowed: Callable[[str], str],
                 on_refused: Callable[[ClientMessage, str], None]) -> None:
        self._max = max_message_size
        self._allowed, self._on_refused = allowed, on_refused
        self._decisions: dict[str, str] = {}
        self._cut = ""
        self.held = self.refused = 0

    def cut(self, message: str) -> None:
        """The session is cut (a lock, an expired certificate): the client's next message
        is answered with `message` and the session ends there."""
        self._cut = self._cut or message

    async def decide(self, message: bytes) -> Verdict:
        try:
            msg = mongomsg.inspect(message, self._max)
        except mongo.ProtocolError:
            return b""  # the relay judged its framing: unreadable here means broken
        self.held += 1
        if self._cut:
            return _reply(msg, mongo.error_document(self._cut, mongo.UNAUTHORIZED)) \
                if msg.expects_reply else b""
        why = self._judge(msg)
        if why:
            self.refused += 1
            if self.refused <= MAX_AUDITED:
                self._on_refused(msg, why)
            return Answer(_reply(msg, mongo.error_document(why, mongo.UNAUTHORIZED))
                          if msg.expects_reply else b"")
        stripped = mongomsg.strip_handshake(message, msg)
        return None if stripped is message else Replace(stripped)

    def _judge(self, msg: ClientMessage) -> str:
        """Why `msg` is refused ("" if it is not)."""
        if msg.compressed:
            return NO_COMPRESSION
        if msg.is_auth:
            return f"access to db denied: {AUTH_REFUSED.format(msg.command)}"
        if msg.is_handshake:  # reads nothing of any database
            return ""
        if not msg.database:
            return NO_DATABASE
        for db in (msg.database, *msg.writes_to):
            if why := self._decision(db):
                return why
        return ""

    def _decision(self, db: str) -> str:
        """The roles' answer for `db`, asked once per session (the auth service reads its
        storage); a session naming more than MAX_REMEMBERED databases is refused the
        others, so no client can make every message a storage read."""
        why = self._decisions.get(db)
        if why is None:
            if len(self._decisions) >= MAX_REMEMBERED:
                return (f"a session may use at most {MAX_REMEMBERED} databases: open "
                        "another connection")
            why = self._decisions[db] = self._allowed(db)
        return why


def _reply(msg: ClientMessage, document: mongo.Document) -> bytes:
    """An answer in the format the client reads after `msg` (OP_REPLY after OP_QUERY)."""
    build = mongo.op_reply if msg.op_code == mongo.OP_QUERY else mongo.op_msg
    return build(msg.header.request_id, document)


async def answer_with(stream: ByteStream, document: mongo.Document) -> None:
    """A session that never started (refused, or the database unreachable): answer each
    client message (up to MAX_ANSWERS, each ≤ READ_CAP) with `document`, in the format it
    expects (OP_REPLY to OP_QUERY, else OP_MSG); return at the client's hang-up between
    messages."""
    reader = BufferedReader(stream)
    for _ in range(MAX_ANSWERS):
        try:
            head = await reader.readexactly(mongo.HEADER_SIZE)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise
            return
        header = mongo.parse_header(head)
        if header.length > READ_CAP:
            raise mongo.ProtocolError(f"a message of {header.length} bytes from a refused "
                                      f"client (read at most {READ_CAP})")
        request = mongo.parse_request(
            head + await reader.readexactly(header.length - mongo.HEADER_SIZE))
        if request.expects_reply:
            await stream.write(mongo.reply_to(request, document))
