"""Credentials of `database-tunnel` services: renewed like outputs, kept in memory.

A tunnel's client certificate never touches the disk: the renewer puts each renewal in
a `CredentialsHolder`, and the local proxy (the data path) reads `current()` for every
new connection or subscribes with `on_change`.

The local proxy attaches through `register_tunnel_runner`: a coroutine function the
bot starts once per tunnel service with a `TunnelContext`, and cancels on shutdown or
reload. Until one is registered, `mwibot start` refuses a config with a tunnel rather
than renew credentials nobody uses.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.diag import HealthRegistry
from mwiproxy.config.bot import BotConfig, DatabaseTunnelService

log = logging.getLogger("mwiproxy.bot")

NO_LOCAL_PROXY = "database-tunnel needs the local proxy (mwibot proxy)"

ChangeCallback = Callable[[Credentials], None]


class CredentialsHolder:
    """The current credentials of one tunnel; replaced whole on each renewal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._creds: Credentials | None = None
        self._callbacks: list[ChangeCallback] = []
        self._ready = asyncio.Event()

    def current(self) -> Credentials:
        """The newest credentials; LookupError before the first renewal."""
        creds = self._creds
        if creds is None:
            raise LookupError(f"database-tunnel {self.name}: no credentials yet")
        return creds

    async def wait(self) -> Credentials:
        """The credentials, waiting for the first renewal if needed."""
        await self._ready.wait()
        return self.current()

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(creds)` after each renewal; returns an unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def update(self, creds: Credentials) -> None:
        self._creds = creds
        self._ready.set()
        for callback in list(self._callbacks):
            try:
                callback(creds)
            except Exception:  # a consumer's bug must not stop renewals
                log.exception("database-tunnel %s: change callback failed", self.name)


@dataclass(frozen=True)
class TunnelContext:
    """What a tunnel runner gets: the bot config, its service, credentials, health."""

    config: BotConfig
    service: DatabaseTunnelService
    holder: CredentialsHolder
    health: HealthRegistry


TunnelRunner = Callable[[TunnelContext], Awaitable[None]]

_runner: TunnelRunner | None = None


def register_tunnel_runner(runner: TunnelRunner | None) -> None:
    """Install the coroutine that serves a database-tunnel (None removes it)."""
    global _runner
    _runner = runner


def tunnel_runner() -> TunnelRunner | None:
    return _runner


def localproxy_available() -> bool:
    """True once the data path's `mwiproxy.localproxy.server.LocalProxy` exists."""
    try:
        module = importlib.import_module("mwiproxy.localproxy.server")
    except ImportError:
        return False
    return hasattr(module, "LocalProxy")


def check_tunnels_servable(config: BotConfig) -> None:
    """Refuse tunnels nobody can serve (ValueError with the operator's message)."""
    tunnels = [s for s in config.services if isinstance(s, DatabaseTunnelService)]
    if not tunnels or _runner is not None:
        return
    if not localproxy_available():
        raise ValueError(f"{NO_LOCAL_PROXY}: service {tunnels[0].name!r} cannot be served")
    log.warning("database-tunnel: no runner registered; credentials are renewed in memory only")
