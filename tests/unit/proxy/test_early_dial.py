"""EarlyDial: what reaches the database before the access check decides is a TCP
connection and an SSLRequest, nothing else; cancelling closes the socket whether the
dial is still waiting for the answer or already has it."""

from __future__ import annotations

import asyncio

import pytest

from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.wire import postgres as pg

WIDE = 60.0


async def _database(answer: bool):  # type: ignore[no-untyped-def]
    """A listener standing in for PostgreSQL: reads the 8-byte SSLRequest, answers 'S'
    if `answer`, and hands (request, reader) to the test."""
    got: asyncio.Queue[tuple[bytes, asyncio.StreamReader]] = asyncio.Queue()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(8)
        if answer:
            writer.write(pg.SSL_YES)
            await writer.drain()
        await got.put((request, reader))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = PostgresEngine(DatabaseConfig("db", "postgres", f"127.0.0.1:{port}"),
                            signer=None)  # type: ignore[arg-type]
    return server, engine, got


@pytest.mark.parametrize("answered", [False, True], ids=["waiting", "answered"])
def test_a_cancelled_early_dial_sent_only_the_ssl_request_and_closes(answered):
    async def scenario() -> None:
        server, engine, got = await _database(answer=answered)
        async with server:
            early = engine.dial_early()
            await early.head_start()
            request, reader = await asyncio.wait_for(got.get(), WIDE)
            assert request == pg.ssl_request()
            if answered:  # the dial has its socket: cancel must close it
                await asyncio.wait_for(early.socket(), WIDE)
            early.cancel()
            assert await asyncio.wait_for(reader.read(), WIDE) == b""  # EOF, nothing more

    asyncio.run(scenario())


def test_a_failed_early_dial_is_quietly_dropped_by_cancel():
    async def scenario() -> None:
        server, engine, _ = await _database(answer=False)
        server.close()
        await server.wait_closed()  # nothing listens: the dial fails
        early = engine.dial_early()
        await early.head_start()
        with pytest.raises(OSError):
            await asyncio.wait_for(early.socket(), WIDE)
        early.cancel()

    asyncio.run(scenario())
