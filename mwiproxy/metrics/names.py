"""Every metric name mwibot exports, in one place: they are public API.

Dashboards and alert rules are written against these strings; renaming one breaks
users. tbot's names are kept verbatim so dashboards built for tbot keep working.

Metrics reach the code as an injected object, live (`BotMetrics`) or no-op
(`NoopBotMetrics`), so code that records never checks whether metrics are enabled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# tbot's task loop metrics (labels: service, name).
TASK_ITERATIONS_TOTAL = "tbot_task_iterations_total"
TASK_ITERATIONS_SUCCESSFUL = "tbot_task_iterations_successful"
TASK_ITERATIONS_FAILED = "tbot_task_iterations_failed"
TASK_ITERATION_DURATION_SECONDS = "tbot_task_iteration_duration_seconds"

# Ours: credential freshness per output (label: output) and renewals (label: result).
OUTPUT_EXPIRY_SECONDS = "mwibot_output_expiry_seconds"
OUTPUT_LAST_RENEWAL_TIMESTAMP_SECONDS = "mwibot_output_last_renewal_timestamp_seconds"
RENEWALS_TOTAL = "mwibot_renewals_total"

LABEL_SERVICE = "service"
LABEL_NAME = "name"
LABEL_OUTPUT = "output"
LABEL_RESULT = "result"

RESULT_SUCCESS = "success"
RESULT_FAILURE = "failure"

ALL_NAMES = (
    TASK_ITERATIONS_TOTAL,
    TASK_ITERATIONS_SUCCESSFUL,
    TASK_ITERATIONS_FAILED,
    TASK_ITERATION_DURATION_SECONDS,
    OUTPUT_EXPIRY_SECONDS,
    OUTPUT_LAST_RENEWAL_TIMESTAMP_SECONDS,
    RENEWALS_TOTAL,
)


class BotMetricsSink(Protocol):
    def task_iteration(self, service: str, name: str, ok: bool, seconds: float) -> None: ...
    def output_renewed(self, output: str, not_after: datetime, at: float | None = None) -> None: ...
    def renewal(self, result: str) -> None: ...
    def forget_output(self, output: str) -> None: ...


class NoopBotMetrics:
    """Records nothing; used when no diagnostics address is configured."""

    def task_iteration(self, service: str, name: str, ok: bool, seconds: float) -> None:
        pass

    def output_renewed(self, output: str, not_after: datetime, at: float | None = None) -> None:
        pass

    def renewal(self, result: str) -> None:
        pass

    def forget_output(self, output: str) -> None:
        pass


class BotMetrics:
    """The bot's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = (LABEL_SERVICE, LABEL_NAME)
        self._total = _ExactCounter(TASK_ITERATIONS_TOTAL, "Task iterations started.", labels)
        self._ok = _ExactCounter(
            TASK_ITERATIONS_SUCCESSFUL, "Task iterations that succeeded.", labels
        )
        self._failed = _ExactCounter(TASK_ITERATIONS_FAILED, "Task iterations that failed.", labels)
        self._duration = Histogram(
            TASK_ITERATION_DURATION_SECONDS,
            "Time taken by one task iteration.",
            labels,
            registry=registry,
        )
        self._freshness = _OutputFreshness()
        self._renewals = Counter(
            RENEWALS_TOTAL, "Credential renewals by result.", (LABEL_RESULT,), registry=registry
        )
        # Both results exist at 0 from the start: otherwise the first failure creates the
        # series at 1, increase() sees no rise and an alert misses it.
        for result in (RESULT_SUCCESS, RESULT_FAILURE):
            self._renewals.labels(result)
        for collector in (self._total, self._ok, self._failed, self._freshness):
            registry.register(collector)

    def task_iteration(self, service: str, name: str, ok: bool, seconds: float) -> None:
        key = (service, name)
        self._total.inc(key)
        # both exist from the task's first iteration (the other at 0), so a dashboard or
        # increase() sees the first failure too
        self._ok.inc(key, 1.0 if ok else 0.0)
        self._failed.inc(key, 0.0 if ok else 1.0)
        self._duration.labels(service, name).observe(seconds)

    def output_renewed(self, output: str, not_after: datetime, at: float | None = None) -> None:
        self._freshness.set(output, not_after, time.time() if at is None else at)

    def renewal(self, result: str) -> None:
        self._renewals.labels(result).inc()

    def forget_output(self, output: str) -> None:
        self._freshness.forget(output)


class _ExactCounter(Collector):
    """A labelled counter exposed under exactly `name`, as Go's client does.

    prometheus_client's Counter always appends `_total`, which would turn
    `tbot_task_iterations_failed` into a different series. Exposed as untyped: the
    Prometheus text format would otherwise require the `_total` suffix on the type line.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, label_values: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            items = list(self._values.items())
        for values, count in items:
            metric.add_sample(self.name, dict(zip(self.labels, values, strict=True)), count)
        yield metric


class _OutputFreshness(Collector):
    """Seconds to expiry, computed at scrape time so it falls between renewals."""

    def __init__(self) -> None:
        self._outputs: dict[str, tuple[datetime, float]] = {}
        self._lock = threading.Lock()

    def set(self, output: str, not_after: datetime, renewed_at: float) -> None:
        with self._lock:
            self._outputs[output] = (not_after, renewed_at)

    def forget(self, output: str) -> None:
        with self._lock:
            self._outputs.pop(output, None)

    def collect(self) -> Iterator[Metric]:
        expiry = Metric(
            OUTPUT_EXPIRY_SECONDS, "Seconds until the output's credential expires.", "gauge"
        )
        renewed = Metric(
            OUTPUT_LAST_RENEWAL_TIMESTAMP_SECONDS,
            "Unix time of the output's last successful renewal.",
            "gauge",
        )
        now = datetime.now(UTC)
        with self._lock:
            items = list(self._outputs.items())
        for output, (not_after, at) in items:
            labels = {LABEL_OUTPUT: output}
            expiry.add_sample(OUTPUT_EXPIRY_SECONDS, labels, (not_after - now).total_seconds())
            renewed.add_sample(OUTPUT_LAST_RENEWAL_TIMESTAMP_SECONDS, labels, at)
        yield expiry
        yield renewed
