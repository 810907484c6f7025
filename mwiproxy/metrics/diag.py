"""The diagnostics server of every long-running process (the bot, the local proxy, the
database agent): /livez, /readyz, /readyz/{service}, /metrics.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET and HEAD only, one request
per connection (`Connection: close`), request bodies never read, the request head
bounded in size and time. That is all a health probe or a Prometheus scrape needs, and
it leaves no room for request smuggling or slow-loris clients.

Readiness only reports what the renewer last recorded in the `HealthRegistry`; it
never dials the cluster or a database (a probe must not become load, nor fail because
a dependency is slow).

Two questions, two answers:
- `/readyz` (overall): can this host serve now? For a bot service that is whether the
  credentials it serves are present and unexpired (and, for a `database-tunnel`, its
  listener accepts) - not whether its last renewal worked: a renewal failing while the
  last good credentials are valid is `degraded` (200); missing or expired credentials,
  a stopped bot or a listener not accepting are 503 with the reason.
- `/readyz/{service}`: is that service's renewal working? 503 while it is failing
  (with the reason, e.g. the storage path and errno), even while its credentials are
  still good; the body says `ready` and `expires_at` as well.
Services that serve no credentials (the database agent's) are ready when healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from mwiproxy.wire.addr import split_host_port

log = logging.getLogger(__name__)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
INITIALIZING = "initializing"
STATUSES = (HEALTHY, UNHEALTHY, INITIALIZING)
DEGRADED = "degraded"  # overall only: every service can serve, some renewal is failing

Probe = Callable[[], tuple[bool, str]]  # (ready, reason), e.g. LocalProxy.readiness

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 10.0
LINGER_SECONDS = 0.5

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class ServiceHealth:
    status: str  # of its renewal (or, without credentials, of the service itself)
    reason: str
    updated_at: datetime
    serves_credentials: bool = False  # readiness follows `expires_at`, not `status`
    expires_at: datetime | None = None  # of the credentials it serves now; None: none
    blocked: str = ""  # why it cannot serve whatever its credentials (stopped, not listening)

    def unready(self, now: datetime) -> str:
        """Why this service cannot serve at `now`; "" when it can."""
        if self.blocked:
            return self.blocked
        if not self.serves_credentials:
            return "" if self.status == HEALTHY else (self.reason or self.status)
        failing = f" ({self.reason})" if self.reason and self.status != HEALTHY else ""
        if self.expires_at is None:
            return f"no credentials yet{failing}"
        if self.expires_at <= now:
            return f"credentials expired at {_iso(self.expires_at)}{failing}"
        return ""

    def to_json(self, now: datetime | None = None) -> dict[str, object]:
        expires = _iso(self.expires_at) if self.expires_at else None
        return {"status": self.status, "reason": self.reason,
                "updated_at": _iso(self.updated_at),
                "ready": not self.unready(now or datetime.now(UTC)), "expires_at": expires}


class HealthRegistry:
    """Last known status of each service; safe to update from any thread."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceHealth] = {}
        self._probes: dict[str, Probe] = {}
        self._lock = threading.Lock()

    def set(self, service: str, status: str, reason: str = "") -> None:
        """Record a status; what the service serves (credentials, blocks) is kept."""
        if status not in STATUSES:
            raise ValueError(f"unknown health status {status!r}")
        self._update(service, status=status, reason=reason)

    def serving(self, service: str, expires_at: datetime | None) -> None:
        """The service now serves credentials valid until `expires_at` (None: none), and
        its readiness follows them from now on."""
        self._update(service, serves_credentials=True, expires_at=expires_at)

    def block(self, service: str, reason: str) -> None:
        """Not ready whatever its credentials, for `reason` ("" lifts the block)."""
        self._update(service, blocked=reason)

    def probe(self, service: str, probe: Probe | None) -> None:
        """While set, `probe()` decides on each read whether the service is blocked."""
        with self._lock:
            if probe is None:
                self._probes.pop(service, None)
            else:
                self._probes[service] = probe

    def _update(self, service: str, **changes: object) -> None:
        with self._lock:
            old = self._services.get(service) or ServiceHealth(INITIALIZING, "", _now())
            if "status" in changes:
                changes["updated_at"] = _now()
            self._services[service] = replace(old, **changes)  # type: ignore[arg-type]

    def remove(self, service: str) -> None:
        with self._lock:
            self._services.pop(service, None)
            self._probes.pop(service, None)

    def get(self, service: str) -> ServiceHealth | None:
        return self.snapshot().get(service)

    def snapshot(self) -> dict[str, ServiceHealth]:
        with self._lock:
            services, probes = dict(self._services), dict(self._probes)
        for name, probe in probes.items():  # outside the lock: a probe may take a moment
            if name in services:
                ready, why = probe()
                services[name] = replace(services[name], blocked="" if ready else why)
        return services

    def readiness(self) -> tuple[str, dict[str, str]]:
        """(overall status, {service: why it cannot serve}) - see the module docstring."""
        services, now = self.snapshot(), _now()
        unready = {n: why for n, h in services.items() if (why := h.unready(now))}
        if unready:
            starting = all(services[n].status == INITIALIZING for n in unready)
            return (INITIALIZING if starting else UNHEALTHY), unready
        if any(h.status != HEALTHY for h in services.values()):
            return DEGRADED, {}
        return HEALTHY, {}

    def overall(self) -> str:
        return self.readiness()[0]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    allow: str = ""


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DiagServer:
    """Serves diagnostics on `addr` ("host:port"; binds exactly there, e.g. 127.0.0.1:3001)."""

    def __init__(
        self, addr: str, health: HealthRegistry, registry: CollectorRegistry | None = None
    ) -> None:
        self.host, self.port = parse_addr(addr)
        self.health = health
        self.registry = registry or CollectorRegistry()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("diagnostics listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DiagServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = True
        try:
            method, target = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT_SECONDS)
            head = method == "HEAD"
            response = self.route(method, target)
        except BadRequest as e:
            response = _text(e.status, f"{e}\n")
            head = False
        except TimeoutError:
            response = _text(408, "request head not received in time\n")
            head = False
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(render(response, head_only=head))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_SECONDS)
        if response.status >= 400:
            await _discard_unread(reader, writer)
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_SECONDS)

    def route(self, method: str, target: str) -> Response:
        path = unquote(target.split("?", 1)[0])
        if path not in ("/livez", "/readyz", "/metrics") and not path.startswith("/readyz/"):
            return _text(404, "not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", allow="GET, HEAD")
        if path == "/livez":
            return _text(200, "OK")
        if path == "/metrics":
            # the text format every scraper reads (the metric contract names this version)
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4)
        if path == "/readyz":
            return self._readyz()
        return self._readyz_service(path.removeprefix("/readyz/"))

    def _readyz(self) -> Response:
        status, unready = self.health.readiness()
        now = _now()
        services = {name: h.to_json(now) for name, h in sorted(self.health.snapshot().items())}
        reason = "; ".join(f"{name}: {why}" for name, why in sorted(unready.items()))
        if status == DEGRADED:
            reason = "serving; renewal failing for " + ", ".join(
                n for n, h in services.items() if h["status"] != HEALTHY)
        code = 200 if status in (HEALTHY, DEGRADED) else 503
        return _json(code, {"status": status, "reason": reason, "services": services})

    def _readyz_service(self, name: str) -> Response:
        health = self.health.get(name)
        if health is None:
            return _json(404, {"error": f"unknown service {name!r}"})
        return _json(200 if health.status == HEALTHY else 503, health.to_json())


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read the request line and headers (bounded); return (method, target)."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise BadRequest(400, "incomplete request") from None
    try:
        request_line = raw.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or not parts[0].isalpha():
        raise BadRequest(400, "malformed request line")
    if parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(400, "unsupported HTTP version")
    return parts[0], parts[1]


def render(response: Response, head_only: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if response.allow:
        lines.append(f"Allow: {response.allow}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + response.body


def parse_addr(addr: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port); port 0 asks for any free port."""
    try:
        return split_host_port(addr)
    except ValueError as e:
        raise ValueError(f"invalid diagnostics address: {e}") from None


async def _discard_unread(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drain briefly: closing with unread input would send a TCP reset
    that can destroy the error response before the client reads it."""
    with contextlib.suppress(ConnectionError, TimeoutError, OSError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(65536):
                pass


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode())


def _json(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode() + b"\n", "application/json")
