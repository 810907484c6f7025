"""The auth service's metrics (cluster only; public API like every metric name).

Recording code gets `AuthMetrics` or `NoopAuthMetrics` injected. What the service
already counts (locks, registered agents, the audit writer's queue and totals) is read
at scrape time, not counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

AUTH_CERTIFICATES_ISSUED_TOTAL = "mwiproxy_auth_certificates_issued_total"
AUTH_CERTIFICATE_ISSUE_DURATION_SECONDS = "mwiproxy_auth_certificate_issue_duration_seconds"
AUTH_JOINS_TOTAL = "mwiproxy_auth_joins_total"
AUTH_RENEWALS_TOTAL = "mwiproxy_auth_renewals_total"
AUTH_REQUESTS_TOTAL = "mwiproxy_auth_requests_total"
AUTH_LOCKS_ACTIVE = "mwiproxy_auth_locks_active"
AUTH_AGENTS_REGISTERED = "mwiproxy_auth_agents_registered"
AUDIT_EVENTS_TOTAL = "mwiproxy_audit_events_total"
AUDIT_EVENTS_DROPPED_TOTAL = "mwiproxy_audit_events_dropped_total"
AUDIT_QUEUE_EVENTS = "mwiproxy_audit_queue_events"
AUDIT_WRITE_DURATION_SECONDS = "mwiproxy_audit_write_duration_seconds"

CERT_KINDS = ("bot", "db_client", "agent", "proxy", "admin", "db_server", "user")
JOIN_ROLES = ("bot", "db")
SUCCESS, FAILURE = "success", "failure"
REQUEST_RESULTS = ("success", "denied", "error")
ISSUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                 2.5, 5)
AUDIT_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                       1, 2.5, 5, 10)


class NoopAuthMetrics:
    def issued(self, kind: str, seconds: float) -> None:
        pass

    def join(self, role: str, ok: bool) -> None:
        pass

    def renewal(self, ok: bool) -> None:
        pass

    def request(self, method: str, result: str) -> None:
        pass

    def audit_batch(self, seconds: float) -> None:
        pass


class AuthMetrics(NoopAuthMetrics):
    """`methods`: the API method table's names (bounded; anything else is "other").
    `locks`, `agents`, `audit_written`, `audit_dropped`, `audit_queued`: read at scrape
    time."""

    def __init__(self, registry: CollectorRegistry, methods: Iterable[str], *,
                 locks: Callable[[], int], agents: Callable[[], int],
                 audit: Callable[[], tuple[int, int, int]]) -> None:
        self._methods = frozenset(methods)
        self._issued = Counter(AUTH_CERTIFICATES_ISSUED_TOTAL, "Certificates issued, by "
                               "kind.", ("kind",), registry=registry)
        self._issue_time = Histogram(AUTH_CERTIFICATE_ISSUE_DURATION_SECONDS, "Time to "
                                     "build and sign one certificate.", ("kind",),
                                     buckets=ISSUE_BUCKETS, registry=registry)
        self._joins = Counter(AUTH_JOINS_TOTAL, "Joins (bot and database agent), by "
                              "result.", ("role", "result"), registry=registry)
        self._renewals = Counter(AUTH_RENEWALS_TOTAL, "Bot renewals at the auth service, "
                                 "by result.", ("result",), registry=registry)
        self._requests = Counter(AUTH_REQUESTS_TOTAL, "Auth API calls, by method and "
                                 "result.", ("method", "result"), registry=registry)
        self._audit_write = Histogram(AUDIT_WRITE_DURATION_SECONDS, "One audit batch "
                                      "transaction.", buckets=AUDIT_WRITE_BUCKETS,
                                      registry=registry)
        locks_gauge = Gauge(AUTH_LOCKS_ACTIVE, "Locks in force.", registry=registry)
        locks_gauge.set_function(lambda: float(locks()))
        agents_gauge = Gauge(AUTH_AGENTS_REGISTERED, "Database agents with a live "
                             "registration.", registry=registry)
        agents_gauge.set_function(lambda: float(agents()))
        registry.register(_AuditCollector(audit))
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        for kind in CERT_KINDS:
            self._issued.labels(kind)
        for role in JOIN_ROLES:
            for result in (SUCCESS, FAILURE):
                self._joins.labels(role, result)
        for result in (SUCCESS, FAILURE):
            self._renewals.labels(result)
        for method in self._methods:
            for result in REQUEST_RESULTS:
                self._requests.labels(method, result)

    def issued(self, kind: str, seconds: float) -> None:
        kind = kind if kind in CERT_KINDS else "user"
        self._issued.labels(kind).inc()
        self._issue_time.labels(kind).observe(max(0.0, seconds))

    def join(self, role: str, ok: bool) -> None:
        self._joins.labels(role, SUCCESS if ok else FAILURE).inc()

    def renewal(self, ok: bool) -> None:
        self._renewals.labels(SUCCESS if ok else FAILURE).inc()

    def request(self, method: str, result: str) -> None:
        self._requests.labels(method if method in self._methods else "other", result).inc()

    def audit_batch(self, seconds: float) -> None:
        self._audit_write.observe(max(0.0, seconds))


class _AuditCollector(Collector):
    """The audit writer's own counts: (written, dropped, queued now)."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        written, dropped, queued = self._read()
        yield CounterMetricFamily(AUDIT_EVENTS_TOTAL.removesuffix("_total"),
                                  "Audit events written.", value=written)
        yield CounterMetricFamily(AUDIT_EVENTS_DROPPED_TOTAL.removesuffix("_total"),
                                  "Audit events dropped (queue full).", value=dropped)
        yield GaugeMetricFamily(AUDIT_QUEUE_EVENTS, "Audit events queued, not yet written.",
                                value=queued)
