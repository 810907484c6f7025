"""The local proxy's metrics and its one log line per connection, against a real cluster
listener (proxy/listener.py on the native path, or its twin): bytes read from the relay
engine while a session is open, active up and back to 0, results and refusal reasons,
and /metrics of the diagnostics server (process collectors, no `_created` series)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.localproxy.health import serve_diagnostics
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.metrics import localproxy as m
from mwiproxy.metrics.registry import process_registry
from mwiproxy.proxy.listener import ProxyListener, ServerTLS
from mwiproxy.relay.streams import ByteStream
from mwiproxy.wire import alpn
from mwiproxy.wire import postgres as pg

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")
BIG = 3_000_000  # what the cluster sends when asked for "big"


def _server_tls() -> ServerTLS:
    key = generate_private_key()
    cert = HOST_CA.sign_server("localhost", ["localhost"], key.public_key(),
                               dt.timedelta(hours=1))
    return ServerTLS(cert_pem(cert), private_key_pem(key), USER_CA.cert_pem)


def _creds(ttl: dt.timedelta = dt.timedelta(minutes=5)) -> tuple[bytes, bytes, bytes]:
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x",
                     route=DatabaseRoute("db", "postgres", "alice", "example-db"))
    cert = USER_CA.sign_identity(ident, key.public_key(), ttl)
    return cert_pem(cert), private_key_pem(key), HOST_CA.cert_pem


async def _cluster_serve(stream: ByteStream, _caller: Identity | None, _remote: str) -> None:
    """Answers the first packet upper-cased, then "big" with BIG bytes, else echoes."""
    await stream.write((await stream.read(65536)).upper())
    while data := await stream.read(65536):
        await stream.write(b"x" * BIG if data == b"big" else data)
    stream.close()


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(seen: dict[Any, float], name: str, **labels: str) -> float:
    return seen[(name, frozenset(labels.items()))]


async def until(pred: Callable[[], bool], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.02)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "mwiproxy.localproxy" and r.getMessage().startswith("connection closed")]


def test_a_session_is_measured_while_open_and_logged_once_at_close(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mwiproxy.localproxy")
    registry = process_registry()
    db = {"service": "db", "mode": "tunnel"}

    async def main() -> None:
        cluster = ProxyListener("127.0.0.1", 0, _server_tls)
        cluster.route_tls(alpn.POSTGRES, _cluster_serve)
        await cluster.start()
        metrics = m.LocalProxyMetrics(registry, asyncio.get_running_loop())
        local = LocalProxy(listen="127.0.0.1:0", proxy_addr="{}:{}".format(*cluster.address),
                           service="db", credentials=_creds, tunnel=True, metrics=metrics)
        await local.start()
        seen = scrape(registry)  # every series is there at 0 before the first connection
        assert value(seen, m.CONNECTIONS_TOTAL, result="error", **db) == 0
        assert value(seen, m.TRANSMIT_BYTES_TOTAL, direction="server_to_client", **db) == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", local.port)
        startup = pg.build_startup({"user": "alice", "database": "example-db"})
        writer.write(startup)
        assert await asyncio.wait_for(reader.readexactly(len(startup)), 30) == startup.upper()
        writer.write(b"big")
        assert len(await asyncio.wait_for(reader.readexactly(BIG), 60)) == BIG
        await until(lambda: value(scrape(registry), m.TRANSMIT_BYTES_TOTAL,
                                  direction="server_to_client", **db) == BIG)
        seen = scrape(registry)  # the session is still open: live bytes, active 1
        assert value(seen, m.CONNECTIONS_ACTIVE, **db) == 1
        assert value(seen, m.TRANSMIT_BYTES_TOTAL, direction="client_to_server", **db) == 3
        assert value(seen, m.CONNECTIONS_TOTAL, result="success", **db) == 1
        assert not _lines(caplog)  # nothing per chunk, nothing before the end
        writer.close()
        await until(lambda: value(scrape(registry), m.CONNECTIONS_ACTIVE, **db) == 0)
        await until(lambda: bool(_lines(caplog)))
        await local.close()
        await cluster.close()

    asyncio.run(main())
    seen = scrape(registry)
    for histogram in (m.FIRST_BYTE_DURATION_SECONDS, m.UPSTREAM_DIAL_DURATION_SECONDS,
                      m.CONNECTION_DURATION_SECONDS):
        assert value(seen, histogram + "_count", **db) == 1
    assert value(seen, m.CONNECTIONS_TOTAL, result="success", **db) == 1
    (line,) = _lines(caplog)
    fields: Any = line.__dict__
    assert (fields["identity"], fields["db_user"], fields["db_name"]) == \
        ("bot-x", "alice", "example-db")
    assert (fields["service"], fields["mode"], fields["result"]) == ("db", "tunnel", "success")
    assert fields["bytes_server_to_client"] == BIG and fields["bytes_client_to_server"] == 3
    assert fields["close_reason"] == "eof" and fields["setup_seconds"] > 0
    assert f"server_to_client={BIG}" in line.getMessage()  # readable in text logs too


async def _refused_once(local: LocalProxy, send: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", local.port)
    writer.write(send)
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 30)  # an ErrorResponse (or nothing), then EOF
    writer.close()


def test_refusals_and_failures_are_counted_by_reason_and_served_on_metrics(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mwiproxy.localproxy")
    registry = process_registry()
    current = {"creds": _creds()}
    startup = pg.build_startup({"user": "alice"})

    async def main() -> bytes:
        metrics = m.LocalProxyMetrics(registry, asyncio.get_running_loop())
        local = LocalProxy(listen="127.0.0.1:0", proxy_addr="127.0.0.1:1",  # nobody there
                           service="db", credentials=lambda: current["creds"],
                           tunnel=True, metrics=metrics)
        await local.start()
        diag = await serve_diagnostics("127.0.0.1:0", {"db": local.readiness}, registry)
        await _refused_once(local, startup)  # the cluster cannot be reached: error
        await _refused_once(local, b"\0\0")  # not a PostgreSQL startup: bad_request
        current["creds"] = _creds(dt.timedelta(seconds=-5))
        await _refused_once(local, startup)  # expired: refused here
        await until(lambda: len(_lines(caplog)) == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", diag.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        await diag.close()
        await local.close()
        return response

    response = asyncio.run(main())
    head, _, body = response.partition(b"\r\n\r\n")
    assert b" 200 " in head and b"Content-Type: text/plain" in head
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in m.ALL_NAMES:
        assert name.removesuffix("_total") in families, name
    assert "process_cpu_seconds" in families and "python_info" in families
    assert b"_created" not in body
    seen = scrape(registry)
    db = {"service": "db", "mode": "tunnel"}
    assert value(seen, m.CONNECTIONS_TOTAL, result="error", **db) == 1
    assert value(seen, m.CONNECTIONS_TOTAL, result="refused", **db) == 2
    assert value(seen, m.UPSTREAM_DIAL_FAILURES_TOTAL, **db) == 1
    for reason, count in ((m.BAD_REQUEST, 1), (m.CREDENTIALS_EXPIRED, 1),
                          (m.CREDENTIALS_MISSING, 0), (m.UPSTREAM_REFUSED, 0)):
        assert value(seen, m.REFUSALS_TOTAL, service="db", reason=reason) == count
    assert value(seen, m.CONNECTIONS_TOTAL, result="success", **db) == 0
    assert [(r.__dict__["close_reason"], r.__dict__["identity"]) for r in _lines(caplog)] == \
        [("upstream_unreachable", "bot-x"), (m.BAD_REQUEST, ""), (m.CREDENTIALS_EXPIRED, "bot-x")]
    (expiry,) = families[m.CREDENTIALS_EXPIRY_TIMESTAMP_SECONDS].samples  # read at scrape
    assert expiry.labels == {"service": "db"} and expiry.value < time.time()  # expired


def test_the_no_op_metrics_offer_every_method_of_the_live_ones() -> None:
    live = {n for n in dir(m.LocalProxyMetrics) if not n.startswith("_")}
    assert live <= set(dir(m.NoopLocalProxyMetrics))

