"""Every metric name of the local proxy (`mwibot proxy … db`, and the `database-tunnel`
services of `mwibot start`), in one place: they are public API (README, "Metrics").

The proxy records through an injected object, live (`LocalProxyMetrics`, one per
registry: a process with several tunnels shares it) or no-op (`NoopLocalProxyMetrics`),
so it never checks whether metrics are on. Labels are bounded: the service (from the
configuration) and the mode; never a user, an address or a connection. Bytes are not
counted here: the relay engine sums them natively and `RelayBytes` reads them at scrape
time (the proxy only passes `count_as(service, mode)` to its Pipe).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mwiproxy.metrics.registry import add_process_collectors
from mwiproxy.metrics.relaybytes import RelayBytes

CONNECTIONS_TOTAL = "mwibot_proxy_connections_total"
CONNECTIONS_ACTIVE = "mwibot_proxy_connections_active"
TRANSMIT_BYTES_TOTAL = "mwibot_proxy_transmit_bytes_total"
CONNECTION_DURATION_SECONDS = "mwibot_proxy_connection_duration_seconds"
UPSTREAM_DIAL_DURATION_SECONDS = "mwibot_proxy_upstream_dial_duration_seconds"
UPSTREAM_DIAL_FAILURES_TOTAL = "mwibot_proxy_upstream_dial_failures_total"
FIRST_BYTE_DURATION_SECONDS = "mwibot_proxy_first_byte_duration_seconds"
REFUSALS_TOTAL = "mwibot_proxy_refusals_total"
CREDENTIALS_EXPIRY_TIMESTAMP_SECONDS = "mwibot_proxy_credentials_expiry_timestamp_seconds"

ALL_NAMES = (CONNECTIONS_TOTAL, CONNECTIONS_ACTIVE, TRANSMIT_BYTES_TOTAL,
             CONNECTION_DURATION_SECONDS, UPSTREAM_DIAL_DURATION_SECONDS,
             UPSTREAM_DIAL_FAILURES_TOTAL, FIRST_BYTE_DURATION_SECONDS, REFUSALS_TOTAL,
             CREDENTIALS_EXPIRY_TIMESTAMP_SECONDS)

SERVICE, MODE, RESULT, REASON = "service", "mode", "result", "reason"
MODE_TUNNEL, MODE_NON_TUNNEL = "tunnel", "non_tunnel"
RESULT_SUCCESS, RESULT_REFUSED, RESULT_ERROR = "success", "refused", "error"
RESULTS = (RESULT_SUCCESS, RESULT_REFUSED, RESULT_ERROR)
# why a connection was refused before it reached the database
CREDENTIALS_MISSING = "credentials_missing"
CREDENTIALS_EXPIRED = "credentials_expired"
MAX_CONNECTIONS = "max_connections"
BAD_REQUEST = "bad_request"
UPSTREAM_REFUSED = "upstream_refused"
OTHER = "other"
REFUSAL_REASONS = (CREDENTIALS_MISSING, CREDENTIALS_EXPIRED, MAX_CONNECTIONS, BAD_REQUEST,
                   UPSTREAM_REFUSED, OTHER)

DIAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FIRST_BYTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 43200,
                    86400)

ExpiryProbe = Callable[[], dt.datetime | None]  # the served certificate's notAfter, if any


def mode_of(tunnel: bool) -> str:
    return MODE_TUNNEL if tunnel else MODE_NON_TUNNEL


class LocalProxyMetricsSink(Protocol):
    def serving(self, service: str, mode: str, expiry: ExpiryProbe) -> tuple[str, ...]: ...
    def stopped(self, service: str) -> None: ...
    def connection(self, service: str, mode: str, result: str) -> None: ...
    def opened(self, service: str, mode: str) -> None: ...
    def closed(self, service: str, mode: str, seconds: float) -> None: ...
    def dialed(self, service: str, mode: str, seconds: float) -> None: ...
    def dial_failed(self, service: str, mode: str) -> None: ...
    def first_byte(self, service: str, mode: str, seconds: float) -> None: ...
    def refused(self, service: str, reason: str) -> None: ...


class NoopLocalProxyMetrics:
    """Records nothing (no registry): the proxy's bytes are not counted either."""

    def serving(self, service: str, mode: str, expiry: ExpiryProbe) -> tuple[str, ...]:
        return ()

    def stopped(self, service: str) -> None:
        pass

    def connection(self, service: str, mode: str, result: str) -> None:
        pass

    def opened(self, service: str, mode: str) -> None:
        pass

    def closed(self, service: str, mode: str, seconds: float) -> None:
        pass

    def dialed(self, service: str, mode: str, seconds: float) -> None:
        pass

    def dial_failed(self, service: str, mode: str) -> None:
        pass

    def first_byte(self, service: str, mode: str, seconds: float) -> None:
        pass

    def refused(self, service: str, reason: str) -> None:
        pass


class LocalProxyMetrics:
    """The local proxy's metrics on `registry`, bytes read from `loop`'s relay engine."""

    def __init__(self, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop) -> None:
        add_process_collectors(registry)
        sm = (SERVICE, MODE)
        self._connections = Counter(CONNECTIONS_TOTAL, "Local proxy connections by how "
                                    "their setup ended.", (*sm, RESULT), registry=registry)
        self._active = Gauge(CONNECTIONS_ACTIVE, "Local proxy connections being relayed.",
                             sm, registry=registry)
        self._bytes = RelayBytes(TRANSMIT_BYTES_TOTAL, "Bytes relayed by the local proxy "
                                 "(open connections included).", sm, loop)
        registry.register(self._bytes)
        self._duration = Histogram(CONNECTION_DURATION_SECONDS, "How long relayed "
                                   "connections lasted.", sm, buckets=DURATION_BUCKETS,
                                   registry=registry)
        self._dial = Histogram(UPSTREAM_DIAL_DURATION_SECONDS, "TCP and TLS to the cluster "
                               "proxy.", sm, buckets=DIAL_BUCKETS, registry=registry)
        self._dial_failures = Counter(UPSTREAM_DIAL_FAILURES_TOTAL, "Dials to the cluster "
                                      "proxy that failed.", sm, registry=registry)
        self._first_byte = Histogram(FIRST_BYTE_DURATION_SECONDS, "From accepting a "
                                     "connection to the first byte of the answer sent to "
                                     "the client.", sm, buckets=FIRST_BYTE_BUCKETS,
                                     registry=registry)
        self._refusals = Counter(REFUSALS_TOTAL, "Connections the local proxy refused.",
                                 (SERVICE, REASON), registry=registry)
        self._expiry = _Expiry()
        registry.register(self._expiry)

    def serving(self, service: str, mode: str, expiry: ExpiryProbe) -> tuple[str, ...]:
        """A proxy for `service` starts: its series exist from now (at 0). Returns the key
        its relays count bytes under (Pipe(count_as=...))."""
        for result in RESULTS:
            self._connections.labels(service, mode, result)
        for reason in REFUSAL_REASONS:
            self._refusals.labels(service, reason)
        for family in (self._active, self._duration, self._dial, self._dial_failures,
                       self._first_byte):
            family.labels(service, mode)
        self._expiry.watch(service, expiry)
        key = (service, mode)
        self._bytes.start(key)
        return key

    def stopped(self, service: str) -> None:
        """The proxy stopped: its certificate is no longer served (counters stay)."""
        self._expiry.forget(service)

    def connection(self, service: str, mode: str, result: str) -> None:
        self._connections.labels(service, mode, result).inc()

    def opened(self, service: str, mode: str) -> None:
        self._active.labels(service, mode).inc()

    def closed(self, service: str, mode: str, seconds: float) -> None:
        self._active.labels(service, mode).dec()
        self._duration.labels(service, mode).observe(seconds)

    def dialed(self, service: str, mode: str, seconds: float) -> None:
        self._dial.labels(service, mode).observe(seconds)

    def dial_failed(self, service: str, mode: str) -> None:
        self._dial_failures.labels(service, mode).inc()

    def first_byte(self, service: str, mode: str, seconds: float) -> None:
        self._first_byte.labels(service, mode).observe(seconds)

    def refused(self, service: str, reason: str) -> None:
        self._refusals.labels(service, reason if reason in REFUSAL_REASONS else OTHER).inc()


class _Expiry(Collector):
    """notAfter of the certificate each proxy serves, read at scrape time (so a renewal
    shows at the next scrape, with no timer)."""

    def __init__(self) -> None:
        self._probes: dict[str, ExpiryProbe] = {}
        self._lock = threading.Lock()

    def watch(self, service: str, probe: ExpiryProbe) -> None:
        with self._lock:
            self._probes[service] = probe

    def forget(self, service: str) -> None:
        with self._lock:
            self._probes.pop(service, None)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            probes = sorted(self._probes.items())
        for service, probe in probes:
            not_after = probe()
            if not_after is not None:
                family.add_metric([service], not_after.timestamp())
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(CREDENTIALS_EXPIRY_TIMESTAMP_SECONDS, "When the "
                                 "certificate the local proxy presents expires (Unix time).",
                                 labels=(SERVICE,))

