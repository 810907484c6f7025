"""Every process's metrics registry, built in one place: its own registry (never the
global one, so tests and embedded uses do not collide), process and platform collectors,
and no `_created` series."""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)


def process_registry() -> CollectorRegistry:
    """A process's own registry: process and platform collectors, no `_created` series."""
    registry = CollectorRegistry()
    add_process_collectors(registry)
    return registry


def add_process_collectors(registry: CollectorRegistry) -> None:
    """The same on an existing registry (the bot's); a second call changes nothing."""
    disable_created_metrics()
    for collector in (ProcessCollector, PlatformCollector):
        with contextlib.suppress(ValueError):  # "Duplicated timeseries": there already
            collector(registry=registry)
