"""A MongoDB session's relay, in Python: one task reads the client's messages whole and
checks each before it goes to the database, one copies the database's bytes back.

Why not the native relay: every message carries its own `$db`, so each must be parsed,
and the native relay has no MongoDB framer yet (the follow-up: a "mongodb" inspector in
the native relay's framework, deciding per message with this module's rules). Bounded:
a message is at most the server's maxMessageSizeBytes and its inspection walks a bounded
number of fields (wire/mongomsg.py), the database's answers are copied in chunks of at
most 64 KiB with no parsing, and each task awaits its writes (a slow side slows only
its own direction; nothing is buffered beyond one message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from mwiproxy import _native
from mwiproxy.relay.streams import READ_SIZE, BufferedReader, ByteStream, FramedStream
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
# a cut session answers the client's next messages with why, for this long at most
FAREWELL_TIMEOUT = 5.0
MAX_ANSWERS = 16  # messages answered with an error before hanging up
READ_CAP = 64 * 1024  # the largest message read from a client that is refused anyway


@dataclass
class RelayResult:
    bytes_to_db: int = 0
    bytes_to_client: int = 0
    messages: int = 0
    refused: int = 0
    reason: str = ""


class Relay:
    """`allowed(db)` answers "" or why not; `on_refused(message, why)` is told of the
    first MAX_AUDITED refusals."""

    def __init__(self, client: ByteStream, db: ByteStream, max_message_size: int, *,
                 allowed: Callable[[str], str],
                 on_refused: Callable[[ClientMessage, str], None],
                 keepalive: float | None = None) -> None:
        self._client, self._db = client, db
        self._max = max_message_size
        self._allowed, self._on_refused = allowed, on_refused
        self._keepalive = keepalive if isinstance(client, FramedStream) else None
        self._decisions: dict[str, str] = {}
        self._client_lock = asyncio.Lock()
        self._last_write = time.monotonic()
        self._tasks: list[asyncio.Task[str]] = []
        self._db_failed = False  # the last OSError was the database's (a write to it)
        self._farewell = ""
        self.result = RelayResult()

    async def run(self) -> RelayResult:
        if self.result.reason:  # cut (a lock) before it ran
            self._db.close()
            if self._farewell:
                await self._say_farewell()
            self._client.close()
            return self.result
        self._tasks = [asyncio.ensure_future(self._client_to_db()),
                       asyncio.ensure_future(self._db_to_client())]
        if self._keepalive:
            self._tasks.append(asyncio.ensure_future(self._keepalives(self._keepalive)))
        try:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and not self.result.reason:
                    self.result.reason = task.result()
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._db.close()
            if self._farewell:
                await self._say_farewell()
            self._client.close()
        return self.result

    async def _say_farewell(self) -> None:
        document = mongo.error_document(self._farewell, mongo.UNAUTHORIZED)
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError,
                                 mongo.ProtocolError):
            await asyncio.wait_for(answer_with(self._client, document), FAREWELL_TIMEOUT)

    def close(self, reason: str = _native.REASON_CLOSED, message: str = "") -> None:
        """Cut the session (a lock, an expired certificate, shutdown): the database side
        at once; the client's next messages (within FAREWELL_TIMEOUT) are answered with
        `message`, as MongoDB has no unsolicited message to say it."""
        if not self.result.reason:
            self.result.reason = reason
            self._farewell = message
        for task in self._tasks:
            task.cancel()

    # -- client → database ---------------------------------------------------------------

    async def _client_to_db(self) -> str:
        reader = BufferedReader(self._client)
        try:
            while True:
                try:
                    head = await reader.readexactly(mongo.HEADER_SIZE)
                except asyncio.IncompleteReadError as e:
                    return _native.REASON_RESET_A if e.partial else _native.REASON_EOF
                header = mongo.parse_header(head, self._max)
                message = head + await reader.readexactly(header.length - mongo.HEADER_SIZE)
                await self._pass(message)
        except mongo.ProtocolError:
            return _native.REASON_ERROR
        except asyncio.IncompleteReadError:
            return _native.REASON_RESET_A
        except OSError:
            return _native.REASON_RESET_B if self._db_failed else _native.REASON_RESET_A

    async def _pass(self, message: bytes) -> None:
        msg = mongomsg.inspect(message, self._max)
        self.result.messages += 1
        why, code = self._judge(msg)
        if why:
            self.result.refused += 1
            if self.result.refused <= MAX_AUDITED:
                self._on_refused(msg, why)
            if msg.expects_reply:
                await self._to_client(_reply(msg, mongo.error_document(why, code)))
            return
        message = mongomsg.strip_handshake(message, msg)
        try:
            await self._db.write(message)
        except OSError:
            self._db_failed = True
            raise
        self.result.bytes_to_db += len(message)

    def _judge(self, msg: ClientMessage) -> tuple[str, tuple[int, str]]:
        """Why `msg` is refused ("" if it is not) and the error code to answer with."""
        if msg.compressed:
            return NO_COMPRESSION, mongo.UNAUTHORIZED
        if msg.is_auth:
            return f"access to db denied: {AUTH_REFUSED.format(msg.command)}", \
                mongo.UNAUTHORIZED
        if msg.is_handshake:  # reads nothing of any database
            return "", mongo.UNAUTHORIZED
        if not msg.database:
            return NO_DATABASE, mongo.UNAUTHORIZED
        for db in (msg.database, *msg.writes_to):
            if why := self._decision(db):
                return why, mongo.UNAUTHORIZED
        return "", mongo.UNAUTHORIZED

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

    # -- database → client ---------------------------------------------------------------

    async def _db_to_client(self) -> str:
        while True:
            try:
                data = await self._db.read(READ_SIZE)
            except OSError:
                return _native.REASON_RESET_B
            if not data:
                return _native.REASON_EOF
            try:
                await self._to_client(data)
            except OSError:
                return _native.REASON_RESET_A

    async def _to_client(self, data: bytes) -> None:
        async with self._client_lock:
            await self._client.write(data)
            self._last_write = time.monotonic()
        self.result.bytes_to_client += len(data)

    async def _keepalives(self, interval: float) -> str:
        """`-ping`: an empty frame to a client nothing was written to for `interval`."""
        assert isinstance(self._client, FramedStream)
        while True:
            await asyncio.sleep(max(0.05, self._last_write + interval - time.monotonic()))
            if time.monotonic() - self._last_write >= interval:
                try:
                    async with self._client_lock:
                        await self._client.write(b"")  # a frame of length 0: a keepalive
                        self._last_write = time.monotonic()
                except OSError:
                    return _native.REASON_RESET_A


def _reply(msg: ClientMessage, document: mongo.Document) -> bytes:
    """An answer in the format the client reads after `msg` (OP_REPLY after OP_QUERY)."""
    build = mongo.op_reply if msg.op_code == mongo.OP_QUERY else mongo.op_msg
    return build(msg.header.request_id, document)


async def answer_with(stream: ByteStream, document: mongo.Document) -> None:
    """Answer each client message (up to MAX_ANSWERS, each ≤ READ_CAP) with `document`,
    in the format it expects (OP_REPLY to OP_QUERY, else OP_MSG); return at the client's
    hang-up between messages."""
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
