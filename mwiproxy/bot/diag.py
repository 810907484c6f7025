"""The bot's diagnostics server: /livez, /readyz, /readyz/{service}, /metrics.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET and HEAD only, one request
per connection (`Connection: close`), request bodies never read, the request head
bounded in size and time. That is all a health probe or a Prometheus scrape needs, and
it leaves no room for request smuggling or slow-loris clients.

Readiness only reports what the renewer last recorded in the `HealthRegistry`; it
never dials the cluster or a database (a probe must not become load, nor fail because
a dependency is slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mwiproxy.config.cluster import split_host_port

log = logging.getLogger(__name__)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
INITIALIZING = "initializing"
STATUSES = (HEALTHY, UNHEALTHY, INITIALIZING)

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
    status: str
    reason: str
    updated_at: datetime

    def to_json(self) -> dict[str, str]:
        stamp = self.updated_at.isoformat().replace("+00:00", "Z")
        return {"status": self.status, "reason": self.reason, "updated_at": stamp}


class HealthRegistry:
    """Last known status of each bot service; safe to update from any thread."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceHealth] = {}
        self._lock = threading.Lock()

    def set(self, service: str, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown health status {status!r}")
        with self._lock:
            self._services[service] = ServiceHealth(status, reason, datetime.now(UTC))

    def remove(self, service: str) -> None:
        with self._lock:
            self._services.pop(service, None)

    def get(self, service: str) -> ServiceHealth | None:
        with self._lock:
            return self._services.get(service)

    def snapshot(self) -> dict[str, ServiceHealth]:
        with self._lock:
            return dict(self._services)

    def overall(self) -> str:
        """unhealthy if any service is; else initializing if any is; else healthy."""
        statuses = {h.status for h in self.snapshot().values()}
        for status in (UNHEALTHY, INITIALIZING):
            if status in statuses:
                return status
        return HEALTHY


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
            return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/readyz":
            return self._readyz()
        return self._readyz_service(path.removeprefix("/readyz/"))

    def _readyz(self) -> Response:
        services = {name: h.to_json() for name, h in sorted(self.health.snapshot().items())}
        status = self.health.overall()
        return _json(_code(status), {"status": status, "services": services})

    def _readyz_service(self, name: str) -> Response:
        health = self.health.get(name)
        if health is None:
            return _json(404, {"error": f"unknown service {name!r}"})
        return _json(_code(health.status), health.to_json())


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


def _code(status: str) -> int:
    return 200 if status == HEALTHY else 503


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode())


def _json(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode() + b"\n", "application/json")
