"""The bot's `database-tunnel` service: a tunnel-mode LocalProxy fed from the bot's
in-memory credentials (they never touch the disk).

When the bot stops (SIGTERM) the runner is cancelled; it then drains: no new
connections, open sessions get up to DRAIN_TIMEOUT to finish."""

from __future__ import annotations

import logging
from typing import Any

from mwiproxy.localproxy.server import DRAIN_TIMEOUT, LocalProxy
from mwiproxy.process.binding import naming

log = logging.getLogger("mwiproxy.localproxy")


async def serve_database_tunnel(ctx: Any) -> None:
    """The `TunnelRunner` that `mwibot` hands to the bot (one per database-tunnel)."""
    service, holder = ctx.service, ctx.holder
    await holder.wait()

    def current() -> tuple[bytes, bytes, bytes]:
        creds = holder.current()
        return creds.cert_pem, creds.key_pem, b"".join(creds.host_ca_pems)

    proxy = LocalProxy(
        listen=service.listen, proxy_addr=ctx.config.proxy_server or ctx.config.auth_server,
        service=service.service, credentials=current, tunnel=True,
        database=service.database, username=service.username,
        origin=f"database-tunnel {service.name or service.service}",
        metrics=getattr(ctx, "proxy_metrics", None))
    # a bind error names the service's `listen` setting (the bot may run several tunnels)
    with naming(f"database-tunnel {service.name or service.service} listen", service.listen):
        await proxy.start()
    log.info("database-tunnel %s: listening on %s", service.service, proxy.address)
    ctx.accepting(proxy.readiness)
    try:
        await proxy.serve_forever()
    finally:
        ctx.not_accepting("draining: not accepting new connections")
        await proxy.drain(DRAIN_TIMEOUT)
