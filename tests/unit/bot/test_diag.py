from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from mwiproxy.metrics import diag, names
from mwiproxy.metrics.diag import DiagServer, HealthRegistry
from mwiproxy.metrics.names import BotMetrics, NoopBotMetrics

Exchange = Callable[[bytes], Awaitable[tuple[int, dict[str, str], bytes]]]


def run(
    test: Callable[[DiagServer, Exchange], Awaitable[None]],
    health: HealthRegistry | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    async def main() -> None:
        async with DiagServer("127.0.0.1:0", health or HealthRegistry(), registry) as server:

            async def exchange(request: bytes) -> tuple[int, dict[str, str], bytes]:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                writer.write_eof()
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                return parse(raw)

            await test(server, exchange)

    asyncio.run(main())


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body) or body == b""
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_livez() -> None:
    async def check_plain(server: DiagServer, exchange: Exchange) -> None:
        status, headers, body = await exchange(get("/livez"))
        assert (status, body, headers["Connection"]) == (200, b"OK", "close")

    run(check_plain)


def health_with(**services: str) -> HealthRegistry:
    health = HealthRegistry()
    for name, status in services.items():
        health.set(name, status, reason=f"{name} is {status}")
    return health


@pytest.mark.parametrize(
    ("services", "overall", "code"),
    [
        ({}, "healthy", 200),
        ({"db": "healthy", "id": "healthy"}, "healthy", 200),
        ({"db": "healthy", "id": "initializing"}, "initializing", 503),
        ({"db": "unhealthy", "id": "initializing"}, "unhealthy", 503),
    ],
)
def test_readyz_shape(services: dict[str, str], overall: str, code: int) -> None:
    async def check(server: DiagServer, exchange: Exchange) -> None:
        status, headers, body = await exchange(get("/readyz"))
        doc = json.loads(body)
        assert (status, headers["Content-Type"]) == (code, "application/json")
        assert doc["status"] == overall
        assert set(doc["services"]) == set(services)
        for name, entry in doc["services"].items():
            assert set(entry) == {"status", "reason", "updated_at", "ready", "expires_at"}
            assert entry["ready"] == (services[name] == "healthy")
            assert entry["status"] == services[name]
            assert entry["reason"] == f"{name} is {services[name]}"
            stamp = datetime.fromisoformat(entry["updated_at"].replace("Z", "+00:00"))
            assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)

    run(check, health_with(**services))


def test_readyz_per_service() -> None:
    async def check(server: DiagServer, exchange: Exchange) -> None:
        status, _, body = await exchange(get("/readyz/db"))
        assert status == 200 and json.loads(body)["status"] == "healthy"
        status, _, body = await exchange(get("/readyz/tunnel"))
        assert status == 503 and json.loads(body)["reason"] == "tunnel is unhealthy"
        status, _, body = await exchange(get("/readyz/nope"))
        assert status == 404 and "unknown service" in json.loads(body)["error"]

    run(check, health_with(db="healthy", tunnel="unhealthy"))


def test_metrics_exposition() -> None:
    registry = CollectorRegistry()
    metrics = BotMetrics(registry)
    metrics.task_iteration("database", "pg", ok=True, seconds=0.25)
    metrics.task_iteration("database", "pg", ok=False, seconds=0.5)
    metrics.output_renewed("pg", datetime.now(UTC) + timedelta(minutes=30), at=1700000000.0)
    metrics.renewal(names.RESULT_SUCCESS)

    async def check(server: DiagServer, exchange: Exchange) -> None:
        status, headers, body = await exchange(get("/metrics"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        assert 'tbot_task_iterations_total{name="pg",service="database"} 2.0' in text
        assert 'tbot_task_iterations_successful{name="pg",service="database"} 1.0' in text
        assert 'tbot_task_iterations_failed{name="pg",service="database"} 1.0' in text
        assert (
            'tbot_task_iteration_duration_seconds_count{name="pg",service="database"} 2.0' in text
        )
        assert 'mwibot_output_last_renewal_timestamp_seconds{output="pg"} 1.7e+09' in text
        assert 'mwibot_renewals_total{result="success"} 1.0' in text
        expiry = next(
            line for line in text.splitlines() if line.startswith("mwibot_output_expiry_seconds{")
        )
        assert 1700 < float(expiry.split()[-1]) <= 1800
        for name in names.ALL_NAMES:
            assert name in text

    run(check, registry=registry)


def test_noop_metrics_record_nothing() -> None:
    noop = NoopBotMetrics()
    noop.task_iteration("s", "n", True, 1.0)
    noop.output_renewed("o", datetime.now(UTC))
    noop.renewal("success")
    noop.forget_output("o")


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\n\r\n", 400),
        (b"GET livez HTTP/1.1\r\n\r\n", 400),
        (b"G\xffT /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\n", 400),  # client half-closes mid-head
        (get("/nope"), 404),
        (get("/readyz/"), 404),
        (get("/livez", "POST"), 405),
        (get("/metrics", "DELETE"), 405),
    ],
)
def test_bad_requests(request_bytes: bytes, code: int) -> None:
    async def check(server: DiagServer, exchange: Exchange) -> None:
        status, headers, _ = await exchange(request_bytes)
        assert status == code
        if code == 405:
            assert headers["Allow"] == "GET, HEAD"

    run(check)


def test_head_has_no_body_and_query_is_ignored() -> None:
    async def check(server: DiagServer, exchange: Exchange) -> None:
        status, headers, body = await exchange(get("/livez?verbose=1", "HEAD"))
        assert (status, body, headers["Content-Length"]) == (200, b"", "2")

    run(check)


def test_oversized_head_is_refused() -> None:
    async def check(server: DiagServer, exchange: Exchange) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /livez HTTP/1.1\r\nX: " + b"a" * (diag.MAX_HEAD_BYTES * 2))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert parse(raw)[0] == 431

    run(check)


def test_slow_client_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diag, "HEAD_TIMEOUT_SECONDS", 0.2)

    async def check(server: DiagServer, exchange: Exchange) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /livez HTTP/1.1\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert parse(raw)[0] == 408

    run(check)


def test_binds_where_told() -> None:
    server = DiagServer("127.0.0.1:0", HealthRegistry())
    assert server.host == "127.0.0.1"
    with pytest.raises(ValueError, match="invalid diagnostics address"):
        DiagServer("3001", HealthRegistry())


def test_health_registry_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown health status"):
        HealthRegistry().set("db", "fine")
