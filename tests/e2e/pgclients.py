"""Many concurrent PostgreSQL clients in one process, speaking the protocol directly.

    python -m tests.e2e.pgclients PORT COUNT

Each client connects to 127.0.0.1:PORT (a tunnel-mode local proxy: no TLS, no
password), waits until every client is signed in, runs `select <its number>`, and
closes. Prints one JSON line: {"ok": [numbers], "errors": [messages]}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from mwiproxy.wire import postgres as pg

TIMEOUT = 120.0


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


async def _until_ready(reader: asyncio.StreamReader) -> list[pg.BackendMessage]:
    messages = []
    while True:
        message = await pg.read_backend_message(reader)
        if message.type == b"E":
            raise RuntimeError(pg.parse_error_fields(message.body).get("M", "error"))
        messages.append(message)
        if message.type == b"Z":
            return messages


async def _client(port: int, number: int, all_in: asyncio.Barrier) -> int:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        await all_in.abort()  # one failure fails the run now, not at the timeout
        raise
    try:
        writer.write(pg.build_startup({"user": "alice", "database": "example-db"}))
        try:
            await _until_ready(reader)
        except BaseException:
            await all_in.abort()
            raise
        await all_in.wait()  # every client holds its session at the same time
        writer.write(_query(f"select {number}"))
        rows = [m for m in await _until_ready(reader) if m.type == b"D"]
        return int(rows[0].body[6:].decode())  # one column: count, length, value
    finally:
        writer.close()


async def main(port: int, count: int) -> dict[str, list[object]]:
    all_in = asyncio.Barrier(count)
    results = await asyncio.wait_for(asyncio.gather(
        *(_client(port, i, all_in) for i in range(count)), return_exceptions=True), TIMEOUT)
    return {"ok": [r for r in results if isinstance(r, int)],
            "errors": sorted({repr(r) for r in results if isinstance(r, BaseException)})}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
