"""The readiness model of metrics/diag.py: a service serving credentials is ready while
they are valid, whatever its last renewal did; blocks and probes override; the overall
/readyz says which service is not ready and why."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from mwiproxy.metrics.diag import (
    DEGRADED,
    HEALTHY,
    INITIALIZING,
    UNHEALTHY,
    DiagServer,
    HealthRegistry,
)


def readyz(health: HealthRegistry, path: str = "/readyz") -> tuple[int, dict]:
    response = DiagServer("127.0.0.1:0", health).route("GET", path)
    return response.status, json.loads(response.body)


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_valid_credentials_are_ready_before_any_renewal():
    health = HealthRegistry()
    health.set("out", INITIALIZING)
    health.serving("out", later(60))
    code, doc = readyz(health)
    assert (code, doc["status"]) == (200, DEGRADED)
    assert doc["services"]["out"]["ready"] is True
    assert doc["services"]["out"]["expires_at"].endswith("Z")
    assert readyz(health, "/readyz/out")[0] == 503  # its renewal has not happened yet


def test_a_failing_renewal_with_valid_credentials_is_degraded_not_down():
    health = HealthRegistry()
    health.serving("bot-identity", later(60))
    health.set("bot-identity", UNHEALTHY, "cannot store the bot identity in /s (errno 28)")
    code, doc = readyz(health)
    assert (code, doc["status"]) == (200, DEGRADED)
    assert "bot-identity" in doc["reason"]
    code, one = readyz(health, "/readyz/bot-identity")
    assert (code, one["status"], one["ready"]) == (503, UNHEALTHY, True)
    assert "errno 28" in one["reason"]


def test_missing_or_expired_credentials_are_not_ready_with_the_reason():
    health = HealthRegistry()
    health.set("out", UNHEALTHY, "cannot reach the cluster")
    health.serving("out", None)
    code, doc = readyz(health)
    assert (code, doc["status"]) == (503, UNHEALTHY)
    assert doc["reason"] == "out: no credentials yet (cannot reach the cluster)"
    health.serving("out", later(-1))
    code, doc = readyz(health)
    assert code == 503 and "out: credentials expired at" in doc["reason"]
    health.serving("out", later(60))
    health.set("out", HEALTHY)
    assert readyz(health)[1]["status"] == HEALTHY


def test_blocks_and_probes_override_valid_credentials():
    health = HealthRegistry()
    health.set("tun", HEALTHY)
    health.serving("tun", later(60))
    health.block("tun", "not listening yet")
    assert readyz(health)[1]["reason"] == "tun: not listening yet"
    health.block("tun", "")
    answer = (False, "draining: not accepting new connections")
    health.probe("tun", lambda: answer)
    assert readyz(health)[1]["reason"] == "tun: draining: not accepting new connections"
    answer = (True, "")
    assert readyz(health)[0] == 200
    health.probe("tun", None)
    assert readyz(health)[1]["status"] == HEALTHY


def test_services_without_credentials_follow_their_status():
    health = HealthRegistry()  # the database agent's registry
    health.set("db_service", INITIALIZING, "not registered with the cluster yet")
    assert readyz(health)[:1] == (503,) and health.overall() == INITIALIZING
    health.set("db_service", HEALTHY, "serving orders")
    assert readyz(health)[0] == 200 and health.overall() == HEALTHY


def test_a_reload_keeps_status_and_credentials():
    health = HealthRegistry()
    health.serving("out", later(60))
    health.set("out", HEALTHY)
    health.set("out", HEALTHY)  # a status update keeps what the service serves
    assert health.get("out") is not None and health.get("out").expires_at is not None


def test_the_registry_is_served_over_http():
    health = HealthRegistry()
    health.serving("out", later(60))
    health.set("out", HEALTHY)

    async def main() -> bytes:
        async with DiagServer("127.0.0.1:0", health) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return raw

    raw = asyncio.run(main())
    assert raw.startswith(b"HTTP/1.1 200 OK") and b'"ready": true' in raw
