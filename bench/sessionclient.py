"""One process of the session load (bench/sessions40k.py): real PostgreSQL sessions.

`python -m bench.sessionclient PORT COUNT SOURCE_IP [--period S]` opens COUNT sessions
to a tunnel-mode local proxy on 127.0.0.1:PORT from SOURCE_IP (a 127.0.0.x address per
process, so ephemeral ports never run out). Each completes the PostgreSQL startup
(through the cluster process and PgBouncer to PostgreSQL) and runs `SELECT 1`; the process
prints "held H errors E" and holds them, each running `SELECT 1` every --period seconds
(spread over the period). When its stdin closes it prints "queries Q errors E lost L"
(errors: failed startups and queries; lost: sessions that ended while held) and exits.
The protocol is spoken here directly (startup, simple query): psycopg costs far more
memory per connection than this 2-core box can spare for 40,000 of them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys

_IN_FLIGHT = 32
_QUERY = b"Q" + struct.pack("!I", 4 + 9) + b"SELECT 1\x00"


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00"
        for k, v in (("user", user), ("database", database),
                     ("application_name", "sessions40k"))) + b"\x00"
    return struct.pack("!I", len(body) + 4) + body


class Failed(Exception):
    pass


async def until_ready(reader: asyncio.StreamReader) -> None:
    """Read backend messages up to ReadyForQuery; an ErrorResponse fails."""
    error = b""
    while True:
        head = await reader.readexactly(5)
        size = struct.unpack("!I", head[1:])[0]
        if not 4 <= size <= 1 << 20:
            raise Failed(f"bad message length {size}")
        body = await reader.readexactly(size - 4)
        if head[:1] == b"E":
            error = body
        elif head[:1] == b"Z":
            if error:
                raise Failed(error.replace(b"\x00", b" ").decode(errors="replace")[:300])
            return


class Load:
    def __init__(self, port: int, source: str, period: float) -> None:
        self.port, self.source, self.period = port, source, period
        self.errors: list[str] = []
        self.queries = 0
        self.lost = 0
        self.stopping = False

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(self.source, 0), limit=4096)
        writer.write(startup_message("alice", "example-db"))
        await asyncio.wait_for(until_ready(reader), 120)
        writer.write(_QUERY)
        await asyncio.wait_for(until_ready(reader), 120)
        return reader, writer

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(random.uniform(0, self.period))
        try:
            while not self.stopping:
                writer.write(_QUERY)
                await asyncio.wait_for(until_ready(reader), 120)
                self.queries += 1
                await asyncio.sleep(self.period)
        except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if not self.stopping:
                self.lost += 1
                self.errors.append(f"held session: {exc!r}")


async def _run(port: int, count: int, source: str, period: float) -> None:
    loop = asyncio.get_running_loop()
    load = Load(port, source, period)
    sem = asyncio.Semaphore(_IN_FLIGHT)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with sem:
            try:
                held.append(await load.open())
            except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                load.errors.append(f"startup: {exc!r}")

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"held {len(held)} errors {len(load.errors)}", load.errors[:1], flush=True)
    tasks = [asyncio.create_task(load.hold(r, w)) for r, w in held]
    await loop.run_in_executor(None, sys.stdin.read)  # hold until the parent says so
    load.stopping = True
    for _, w in held:
        w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"queries {load.queries} errors {len(load.errors)} lost {load.lost}",
          load.errors[:3], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("source")
    parser.add_argument("--period", type=float, default=60.0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(_run(args.port, args.count, args.source, args.period))


if __name__ == "__main__":
    main()
