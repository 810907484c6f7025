"""/livez, /readyz and /metrics for `mwibot proxy`, on the bot's diagnostics server.

Readiness is computed when probed, from each local proxy's `readiness()`: it is
accepting, and its credentials are present, readable and unexpired. A probe never dials
the cluster or the database, so it can neither add load nor fail because they are slow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry

from mwiproxy.metrics.diag import HEALTHY, UNHEALTHY, DiagServer, HealthRegistry, ServiceHealth
from mwiproxy.metrics.registry import process_registry

Probe = Callable[[], tuple[bool, str]]


class ProbedHealth(HealthRegistry):
    """A HealthRegistry whose entries are refreshed from probes on every read."""

    def __init__(self, probes: Mapping[str, Probe]) -> None:
        super().__init__()
        self._probes = dict(probes)

    def _refresh(self) -> None:
        for name, probe in self._probes.items():
            ready, reason = probe()
            self.set(name, HEALTHY if ready else UNHEALTHY, reason)

    def snapshot(self) -> dict[str, ServiceHealth]:  # get() reads through it too
        self._refresh()
        return super().snapshot()


async def serve_diagnostics(addr: str, probes: Mapping[str, Probe],
                            registry: CollectorRegistry | None = None) -> DiagServer:
    """A started DiagServer on `addr` ("host:port") reporting the probes, and `registry`
    on /metrics (by default the process's own collectors only)."""
    diag = DiagServer(addr, ProbedHealth(probes), registry or process_registry())
    await diag.start()
    return diag
