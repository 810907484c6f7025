"""The metrics of the cluster proxy's data path and of the database agent (public API:
the names and labels below are what dashboards and alerts are written against).

An agent exports the same `mwiproxy_db_*` families for the databases it serves (mode
"tunnel" there: link sessions), plus its own heartbeat and identity families.

Recording code gets an injected object, live (`ProxyMetrics`) or no-op
(`NoopProxyMetrics`), and never checks whether metrics are on. Labels stay bounded:
service names come from the configuration (an unknown one is recorded as ""), reasons
and results from the fixed sets below; never an address, a user or a connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mwiproxy.metrics.relaybytes import RelayBytes

DB_CONNECTIONS_TOTAL = "mwiproxy_db_connections_total"
DB_CONNECTIONS_ACTIVE = "mwiproxy_db_connections_active"
DB_CONNECTIONS_CLOSED_TOTAL = "mwiproxy_db_connections_closed_total"
DB_TRANSMIT_BYTES_TOTAL = "mwiproxy_db_transmit_bytes_total"  # relaybytes.RelayBytes
DB_SESSION_DURATION_SECONDS = "mwiproxy_db_session_duration_seconds"
DB_UPSTREAM_DIAL_DURATION_SECONDS = "mwiproxy_db_upstream_dial_duration_seconds"
DB_UPSTREAM_DIAL_FAILURES_TOTAL = "mwiproxy_db_upstream_dial_failures_total"
DB_FIRST_BYTE_DURATION_SECONDS = "mwiproxy_db_first_byte_duration_seconds"
REFUSALS_TOTAL = "mwiproxy_refusals_total"
QUERY_AUDIT_DROPPED_TOTAL = "mwiproxy_query_audit_dropped_total"
TLS_HANDSHAKE_DURATION_SECONDS = "mwiproxy_tls_handshake_duration_seconds"
CONNECTIONS_UNAUTHENTICATED = "mwiproxy_connections_unauthenticated"
AGENT_HEARTBEATS_TOTAL = "mwiproxy_agent_heartbeats_total"
AGENT_IDENTITY_EXPIRY_TIMESTAMP_SECONDS = "mwiproxy_agent_identity_expiry_timestamp_seconds"

MODE_TUNNEL = "tunnel"
MODE_NON_TUNNEL = "non_tunnel"
MODES = (MODE_TUNNEL, MODE_NON_TUNNEL)
RESULT_SUCCESS, RESULT_REFUSED, RESULT_ERROR = "success", "refused", "error"
CONNECTION_RESULTS = (RESULT_SUCCESS, RESULT_REFUSED, RESULT_ERROR)
RESULT_FAILURE = "failure"
# where a TLS handshake is served (the local proxy serves none: its client's TLS, in
# non-tunnel mode, passes through; its own TLS towards the cluster is its dial)
LISTENER_CLUSTER, LISTENER_AGENT_LINK = "cluster", "agent_link"

# mwiproxy_db_connections_closed_total{reason}: the relay's close reasons, and ours
CLOSE_REASONS = frozenset({"eof", "reset_client", "reset_server", "idle_timeout",
                           "close_timeout", "closed", "error", "lock", "expired",
                           "shutdown", "refused", "protocol"})
# mwiproxy_refusals_total{reason}
REFUSAL_REASONS = ("admission_global", "admission_source", "tls_handshake",
                   "bad_client_hello", "expired", "not_yet_valid", "locked",
                   "stale_generation", "access_denied", "unknown_service", "bad_startup",
                   "wrong_cluster", "plaintext", "timeout", "other")
_REFUSAL_REASONS = frozenset(REFUSAL_REASONS)

SESSION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400,
                   28800, 86400)
DIAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                2.5, 5, 10)
FIRST_BYTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                      5, 10)
HANDSHAKE_BUCKETS = DIAL_BUCKETS


def close_reason(reason: str) -> str:
    """A relay or session end reason as the bounded `reason` label."""
    reason = {"locked": "lock", "certificate_expired": "expired"}.get(reason, reason)
    return reason if reason in CLOSE_REASONS else "error"


def refusal_reason(reason: str) -> str:
    return reason if reason in _REFUSAL_REASONS else "other"


class NoopProxyMetrics:
    """Records nothing: no diagnostics address is configured."""

    def connection(self, service: str, protocol: str, mode: str, result: str) -> None:
        pass

    def opened(self, service: str, protocol: str, mode: str) -> None:
        pass

    def closed(self, service: str, protocol: str, mode: str, reason: str,
               seconds: float) -> None:
        pass

    def dial(self, service: str, protocol: str, seconds: float | None) -> None:
        pass

    def first_byte(self, service: str, protocol: str, mode: str, seconds: float) -> None:
        pass

    def refusal(self, protocol: str, reason: str) -> None:
        pass

    def query_audit_dropped(self, protocol: str, n: int) -> None:
        pass

    def handshake(self, listener: str, seconds: float) -> None:
        pass

    def unauthenticated(self, read: Callable[[], float]) -> None:
        pass

    def acceptor_refusals(self, read: Callable[[], dict[tuple[str, str], int]]) -> None:
        pass

    def heartbeat(self, result: str) -> None:
        pass

    def identity_expiry(self, timestamp: float) -> None:
        pass

    def count_bytes(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the relayed bytes of `loop`'s relay engine (call on the loop)."""

    def bytes_key(self, service: str, protocol: str, mode: str) -> tuple[str, ...] | None:
        """The counter key a session's relay adds its bytes to (None: not counted)."""
        return None


def metric_protocol(protocol: str) -> str:
    """The `protocol` label of a database's series: its wire protocol (CockroachDB speaks
    PostgreSQL's, and its sessions are counted by the PostgreSQL front end)."""
    return "postgres" if protocol == "cockroachdb" else protocol


class ProxyMetrics(NoopProxyMetrics):
    """The data-path families, registered on `registry`. `services`: the configured
    database services (their counters start at 0); `agent`: the agent's extras too."""

    def __init__(self, registry: CollectorRegistry,
                 services: Iterable[str | tuple[str, str]] = (), agent: bool = False) -> None:
        key = ("service", "protocol", "mode")
        self._conns = Counter(DB_CONNECTIONS_TOTAL, "Database connections by result.",
                              (*key, "result"), registry=registry)
        self._active = Gauge(DB_CONNECTIONS_ACTIVE, "Database sessions open now.", key,
                             registry=registry)
        self._closed = Counter(DB_CONNECTIONS_CLOSED_TOTAL, "Database sessions closed, by "
                               "reason.", (*key, "reason"), registry=registry)
        self._duration = Histogram(DB_SESSION_DURATION_SECONDS, "Database session length.",
                                   key, buckets=SESSION_BUCKETS, registry=registry)
        self._dial = Histogram(DB_UPSTREAM_DIAL_DURATION_SECONDS, "TCP + TLS to the "
                               "database or its agent.", ("service", "protocol"),
                               buckets=DIAL_BUCKETS, registry=registry)
        self._query_dropped = Counter(QUERY_AUDIT_DROPPED_TOTAL, "Query-audit records "
                                      "dropped because the audit sink fell behind.",
                                      ("protocol",), registry=registry)
        self._dial_failed = Counter(DB_UPSTREAM_DIAL_FAILURES_TOTAL, "Dials of the database "
                                    "or its agent that failed.", ("service", "protocol"),
                                    registry=registry)
        self._first_byte = Histogram(DB_FIRST_BYTE_DURATION_SECONDS, "From accept to the "
                                     "database's first answer sent to the client.", key,
                                     buckets=FIRST_BYTE_BUCKETS, registry=registry)
        self._registry = registry
        # (service, protocol label): a bare name is a PostgreSQL service
        self._services = [(s, "postgres") if isinstance(s, str) else (s[0], metric_protocol(s[1]))
                          for s in services]
        self._refusals = _Refusals()
        registry.register(self._refusals)
        self._handshake = Histogram(TLS_HANDSHAKE_DURATION_SECONDS, "From accept to the "
                                    "end of the TLS handshake.", ("listener",),
                                    buckets=HANDSHAKE_BUCKETS, registry=registry)
        self._unauth = Gauge(CONNECTIONS_UNAUTHENTICATED, "Connections not authenticated "
                             "yet (first bytes and TLS handshake).", registry=registry)
        self._unauth.set_function(lambda: 0.0)
        self._start_at_zero()
        if agent:
            self._heartbeats = Counter(AGENT_HEARTBEATS_TOTAL, "Agent heartbeats by result.",
                                       ("result",), registry=registry)
            for result in (RESULT_SUCCESS, RESULT_FAILURE):
                self._heartbeats.labels(result)
            self._expiry = Gauge(AGENT_IDENTITY_EXPIRY_TIMESTAMP_SECONDS, "Unix time the "
                                 "agent's identity expires.", registry=registry)

    def count_bytes(self, loop: asyncio.AbstractEventLoop) -> None:
        relayed = RelayBytes(DB_TRANSMIT_BYTES_TOTAL, "Bytes relayed between clients and "
                             "databases (read from the relay engine at scrape time).",
                             ("service", "protocol", "mode"), loop)
        for service, protocol in self._services:
            for mode in MODES:
                relayed.start((service, protocol, mode))
        self._registry.register(relayed)

    def bytes_key(self, service: str, protocol: str, mode: str) -> tuple[str, ...] | None:
        return (service, protocol, mode)

    def _start_at_zero(self) -> None:
        for service, protocol in self._services:
            self._dial_failed.labels(service, protocol)
            for mode in MODES:
                for result in CONNECTION_RESULTS:
                    self._conns.labels(service, protocol, mode, result)
                self._active.labels(service, protocol, mode)
        for protocol in sorted({p for _, p in self._services} or {"postgres"}):
            for reason in REFUSAL_REASONS:
                self._refusals.inc((protocol, reason), 0)

    def connection(self, service: str, protocol: str, mode: str, result: str) -> None:
        self._conns.labels(service, protocol, mode, result).inc()

    def opened(self, service: str, protocol: str, mode: str) -> None:
        self._active.labels(service, protocol, mode).inc()

    def closed(self, service: str, protocol: str, mode: str, reason: str,
               seconds: float) -> None:
        self._active.labels(service, protocol, mode).dec()
        self._closed.labels(service, protocol, mode, close_reason(reason)).inc()
        self._duration.labels(service, protocol, mode).observe(max(0.0, seconds))

    def dial(self, service: str, protocol: str, seconds: float | None) -> None:
        if seconds is None:
            self._dial_failed.labels(service, protocol).inc()
        else:
            self._dial.labels(service, protocol).observe(max(0.0, seconds))

    def first_byte(self, service: str, protocol: str, mode: str, seconds: float) -> None:
        self._first_byte.labels(service, protocol, mode).observe(max(0.0, seconds))

    def refusal(self, protocol: str, reason: str) -> None:
        self._refusals.inc((protocol, refusal_reason(reason)))

    def query_audit_dropped(self, protocol: str, n: int) -> None:
        self._query_dropped.labels(protocol).inc(n)

    def acceptor_refusals(self, read: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Refusals the acceptor only counts (caps, timeouts): read at scrape time."""
        self._refusals.readers.append(read)

    def handshake(self, listener: str, seconds: float) -> None:
        self._handshake.labels(listener).observe(max(0.0, seconds))

    def unauthenticated(self, read: Callable[[], float]) -> None:
        """Read at scrape time (the acceptor's count of connections not handed over)."""
        self._unauth.set_function(read)

    def heartbeat(self, result: str) -> None:
        self._heartbeats.labels(result).inc()

    def identity_expiry(self, timestamp: float) -> None:
        self._expiry.set(timestamp)


class _Refusals(Collector):
    """mwiproxy_refusals_total: what Python counted plus what the acceptors counted
    (read from them at scrape time, never counted twice)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.readers: list[Callable[[], dict[tuple[str, str], int]]] = []

    def inc(self, key: tuple[str, str], by: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + by

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
        for read in self.readers:
            for key, n in read().items():
                counts[key] = counts.get(key, 0) + n
        family = CounterMetricFamily(REFUSALS_TOTAL.removesuffix("_total"),
                                     "Connections refused, by reason.",
                                     labels=("protocol", "reason"))
        for (protocol, reason), n in sorted(counts.items()):
            family.add_metric((protocol, reason), n)
        yield family

