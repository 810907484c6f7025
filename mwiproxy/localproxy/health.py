"""/livez and /readyz for `mwibot proxy`, on the bot's diagnostics server.

Readiness is computed when probed, from each local proxy's `readiness()`: it is
accepting, and its credentials are present, readable and unexpired. A probe never dials
the cluster or the database, so it can neither add load nor fail because they are slow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mwiproxy.bot.diag import HEALTHY, UNHEALTHY, DiagServer, HealthRegistry, ServiceHealth

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

    def snapshot(self) -> dict[str, ServiceHealth]:
        self._refresh()
        return super().snapshot()

    def get(self, service: str) -> ServiceHealth | None:
        self._refresh()
        return super().get(service)


async def serve_diagnostics(addr: str, probes: Mapping[str, Probe]) -> DiagServer:
    """A started DiagServer on `addr` ("host:port") reporting the probes."""
    diag = DiagServer(addr, ProbedHealth(probes))
    await diag.start()
    return diag
