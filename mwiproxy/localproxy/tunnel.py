"""The bot's `database-tunnel` service: a tunnel-mode LocalProxy fed from the bot's
in-memory credentials (they never touch the disk).

When the bot stops (SIGTERM) the runner is cancelled; it then drains: no new
connections, open sessions get up to DRAIN_TIMEOUT to finish."""

from __future__ import annotations

import logging
from typing import Any

from mwiproxy.bot.diag import UNHEALTHY
from mwiproxy.localproxy.server import DRAIN_TIMEOUT, LocalProxy

log = logging.getLogger("mwiproxy.localproxy")


async def serve_database_tunnel(ctx: Any) -> None:
    """Runner for `mwiproxy.bot.tunnels.register_tunnel_runner` (a TunnelContext)."""
    service, holder = ctx.service, ctx.holder
    await holder.wait()

    def current() -> tuple[bytes, bytes, bytes]:
        creds = holder.current()
        return creds.cert_pem, creds.key_pem, b"".join(creds.host_ca_pems)

    proxy = LocalProxy(
        listen=service.listen, proxy_addr=ctx.config.proxy_server or ctx.config.auth_server,
        service=service.service, credentials=current, tunnel=True,
        database=service.database, username=service.username,
        origin=f"database-tunnel {service.name or service.service}")
    await proxy.start()
    log.info("database-tunnel %s: listening on %s", service.service, proxy.address)
    try:
        await proxy.serve_forever()
    finally:
        ctx.health.set(service.name, UNHEALTHY, "draining: not accepting new connections")
        await proxy.drain(DRAIN_TIMEOUT)
