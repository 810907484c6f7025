"""proxy/mongojudge.py behind the relay (Pipe with Inspect("mongodb")) between two real
socket pairs, both builds: what goes to the database, what the client is answered, how
a cut ends it."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from mwiproxy import _native
from mwiproxy.proxy.mongodb import _cut
from mwiproxy.proxy.mongojudge import MAX_AUDITED, MAX_REMEMBERED, MessageJudge
from mwiproxy.relay.pipe import Inspect, Pipe
from mwiproxy.relay.streams import SocketStream
from mwiproxy.wire import mongodb as mongo
from tests.unit.proxy.test_wire_mongomsg import op_msg, op_query

pytest.importorskip("bson")


class Rig:
    def __init__(self, max_size: int = 1 << 20) -> None:
        client_side, self.client = socket.socketpair()
        db_side, self.db = socket.socketpair()
        for s in (self.client, self.db):
            s.setblocking(False)
        self.asked: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.judge = MessageJudge(max_size, allowed=self._allowed,
                                  on_refused=lambda m, why: self.refused.append((m.command,
                                                                                 why)))
        self.pipe = Pipe(SocketStream(client_side), SocketStream(db_side),
                         inspect=Inspect("mongodb", self.judge.decide, max_message=max_size,
                                         allowed=("example-db",)))

    def _allowed(self, db: str) -> str:
        self.asked.append(db)
        return "" if db == "example-db" else f'no role allows db_name "{db}"'

    async def send(self, *messages: bytes) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            await loop.sock_sendall(self.client, m)

    async def recv_exactly(self, sock: socket.socket, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < n:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(data)), 5)
            assert chunk, "closed"
            data += chunk
        return data

    async def recv_message(self, sock: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < 16 or len(data) < struct.unpack_from("<i", data)[0]:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            assert chunk, "closed"
            data += chunk
        return data


def _run(coro):
    return asyncio.run(coro)


def test_allowed_messages_reach_the_database_and_answers_come_back():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        find = op_msg({"find": "t", "$db": "example-db"})
        await rig.send(find, find)
        assert await rig.recv_exactly(rig.db, 2 * len(find)) == find + find
        answer = mongo.op_msg(7, {"ok": 1.0})
        await asyncio.get_running_loop().sock_sendall(rig.db, answer)
        assert await rig.recv_message(rig.client) == answer
        rig.client.close()
        rig.db.shutdown(socket.SHUT_WR)
        result = await asyncio.wait_for(task, 5)
        assert (result.reason, rig.judge.held, rig.judge.refused) == ("eof", 0, 0)
        assert result.bytes_a_to_b == 2 * len(find)
        assert result.bytes_b_to_a == len(answer)
        assert rig.asked == []  # the session's database passes natively
    _run(main())


def test_refused_messages_are_answered_in_their_format_and_never_sent():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        await rig.send(op_query("other.$cmd", {"count": "t"}, request_id=41))
        header, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert (header.op_code, header.response_to) == (mongo.OP_REPLY, 41)
        assert doc["code"] == 13 and '"other"' in doc["errmsg"]
        await rig.send(op_msg({"saslStart": 1, "$db": "example-db"}, request_id=42))
        header, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert header.op_code == mongo.OP_MSG and "saslStart is refused" in doc["errmsg"]
        await rig.send(op_msg({"ping": 1}, request_id=43))  # no $db
        _, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert "names no database" in doc["errmsg"]
        inner = op_msg({"ping": 1, "$db": "example-db"})[16:]
        body = struct.pack("<iiB", mongo.OP_MSG, len(inner), 0) + inner
        await rig.send(struct.pack("<iiii", 16 + len(body), 44, 0, mongo.OP_COMPRESSED) + body)
        _, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert "compression was not agreed" in doc["errmsg"]
        await rig.send(op_msg({"ping": 1, "$db": "example-db"}, request_id=45))
        assert await rig.recv_message(rig.db) == op_msg({"ping": 1, "$db": "example-db"},
                                                        request_id=45)  # goes on
        rig.client.close()
        rig.db.shutdown(socket.SHUT_WR)
        result = await asyncio.wait_for(task, 5)
        assert result.bytes_a_to_b == len(op_msg({"ping": 1, "$db": "example-db"},
                                                 request_id=45))
        assert rig.judge.refused == 4 and result.bytes_b_to_a == 0  # answers: not the db's
        assert [c for c, _ in rig.refused] == ["count", "saslStart", "ping", ""]
    _run(main())


def test_refusals_are_audited_up_to_a_bound():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        n = MAX_AUDITED + 5
        await rig.send(*[op_msg({"ping": 1, "$db": "x"}, flags=mongo.MSG_MORE_TO_COME)] * n)
        await rig.send(op_msg({"ping": 1, "$db": "x"}))
        await rig.recv_message(rig.client)  # only the last one expects an answer
        rig.client.close()
        rig.db.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(task, 5)
        assert rig.judge.refused == n + 1 and len(rig.refused) == MAX_AUDITED
    _run(main())


def test_a_message_over_the_server_size_ends_the_session_unsent():
    async def main():
        rig = Rig(max_size=4096)
        task = asyncio.ensure_future(rig.pipe.run())
        await rig.send(struct.pack("<iiii", 4097, 1, 0, mongo.OP_MSG))
        result = await asyncio.wait_for(task, 5)
        assert result.reason == _native.REASON_PROTOCOL and result.bytes_a_to_b == 0
    _run(main())


def test_a_cut_ends_both_sides():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        await asyncio.sleep(0)
        rig.pipe.close("locked")
        result = await asyncio.wait_for(task, 5)
        assert result.reason == "locked"
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(rig.client, 10), 5) == b""
        assert await asyncio.wait_for(loop.sock_recv(rig.db, 10), 5) == b""
    _run(main())


def test_an_aggregate_writing_to_another_database_is_checked_for_it():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        await rig.send(op_msg({"aggregate": "t", "cursor": {}, "$db": "example-db",
                               "pipeline": [{"$out": {"db": "secret", "coll": "c"}}]}))
        _, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert '"secret"' in doc["errmsg"]
        rig.client.close()
        rig.db.shutdown(socket.SHUT_WR)
        result = await asyncio.wait_for(task, 5)
        assert result.bytes_a_to_b == 0 and rig.asked == ["example-db", "secret"]
    _run(main())


def test_a_session_names_a_bounded_number_of_databases():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        for i in range(MAX_REMEMBERED + 3):
            await rig.send(op_msg({"ping": 1, "$db": f"db{i}"}))
            _, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert "at most" in doc["errmsg"]
        rig.client.close()
        rig.db.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(task, 5)
        assert len(rig.asked) == MAX_REMEMBERED
    _run(main())


def test_a_cut_with_a_message_tells_the_client_at_its_next_message():
    async def main():
        rig = Rig()
        task = asyncio.ensure_future(rig.pipe.run())
        ping = op_msg({"ping": 1, "$db": "example-db"}, request_id=76)
        await rig.send(ping)  # passes natively until the cut
        assert await rig.recv_message(rig.db) == ping
        _cut(rig.pipe, rig.judge, "locked", "session ended: bot locked (incident 27)")
        await asyncio.sleep(0.1)  # the relay's worker takes the request
        await rig.send(op_msg({"ping": 1, "$db": "example-db"}, request_id=77))
        header, doc = mongo.parse_reply(await rig.recv_message(rig.client))
        assert header.response_to == 77 and "incident 27" in doc["errmsg"]
        result = await asyncio.wait_for(task, 5)
        assert result.reason == "refused"  # the session's own reason ("locked") wins
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(rig.db, 10), 5) == b""  # never sent
        rig.client.close()
    _run(main())
