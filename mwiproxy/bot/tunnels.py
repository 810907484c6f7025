"""Credentials of `database-tunnel` services: renewed like outputs, kept in memory.

A tunnel's client certificate never touches the disk: the renewer puts each renewal in
a `CredentialsHolder`, and the local proxy (the data path) reads `current()` for every
new connection or subscribes with `on_change`.

The local proxy attaches as a `TunnelRunner`: a coroutine function that the command
line (floor 5) hands to the bot, which starts it once per tunnel service with a
`TunnelContext`. The bot never imports the local proxy (a layer above it); without a
runner, `mwibot start` refuses a config with a tunnel rather than renew credentials
nobody uses.

The running tunnels belong to one `TunnelSet` (the daemon's), which outlives the
Renewers: a reload keeps a tunnel whose listener is built from the same settings - its
listener, its open connections and its holder, which the new Renewer renews into - stops
a removed one, and restarts a changed one. A stop for good (a lock) or the bot's shutdown
stops them all (each drains).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mwiproxy.bot.credentials import Credentials
from mwiproxy.config.bot import BotConfig, DatabaseTunnelService
from mwiproxy.metrics.diag import UNHEALTHY, HealthRegistry, Probe
from mwiproxy.metrics.localproxy import LocalProxyMetricsSink
from mwiproxy.process.binding import BindError

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
    # the bot's local proxy metrics (metrics/localproxy.py), on its /metrics; None: off
    proxy_metrics: LocalProxyMetricsSink | None = None

    def accepting(self, probe: Probe) -> None:
        """The listener accepts: readiness follows `probe` (LocalProxy.readiness: still
        accepting, credentials present and unexpired) until `not_accepting`."""
        self.health.probe(self.service.name, probe)
        self.health.block(self.service.name, "")

    def not_accepting(self, reason: str) -> None:
        """The listener stopped accepting (draining, closed): not ready, for `reason`."""
        self.health.probe(self.service.name, None)
        self.health.block(self.service.name, reason)
        self.health.set(self.service.name, UNHEALTHY, reason)


TunnelRunner = Callable[[TunnelContext], Awaitable[None]]


def check_tunnels_servable(config: BotConfig, runner: TunnelRunner | None) -> None:
    """Refuse tunnels nobody can serve (ValueError with the operator's message)."""
    tunnels = [s for s in config.services if isinstance(s, DatabaseTunnelService)]
    if tunnels and runner is None:
        raise ValueError(f"{NO_LOCAL_PROXY}: service {tunnels[0].name!r} cannot be served")


@dataclass
class _Tunnel:
    key: tuple[object, ...]
    ctx: TunnelContext
    task: asyncio.Task[None] | None = None


def tunnel_key(config: BotConfig, service: DatabaseTunnelService) -> tuple[object, ...]:
    """What the listener is built from (localproxy/tunnel.py): the service without its
    renewal-only settings (the next renewal applies those), and the proxy it dials."""
    listener = dataclasses.replace(service, credential_ttl=None, renewal_interval=None)
    return listener, config.proxy_server or config.auth_server


class TunnelSet:
    """The bot's database-tunnels, one `runner` each, kept across reloads when unchanged.

    `configure(config)` decides which tunnels a config keeps; `start()` starts the ones
    not running (the Renewer does once the bot identity is there); `stop_all()` stops
    every one. Without a runner it only holds the credentials (nothing listens)."""

    def __init__(self, runner: TunnelRunner | None, health: HealthRegistry) -> None:
        self.runner = runner
        self.health = health
        self._tunnels: dict[str, _Tunnel] = {}

    @property
    def holders(self) -> dict[str, CredentialsHolder]:
        return {name: t.ctx.holder for name, t in self._tunnels.items()}

    def running(self, name: str) -> bool:
        t = self._tunnels.get(name)
        return t is not None and t.task is not None and not t.task.done()

    async def apply(self, config: BotConfig) -> None:
        """Adopt `config`: stop the removed and changed tunnels (they drain), keep the
        unchanged ones running; the new and changed ones wait for `start()`."""
        await _stop(self.configure(config))

    def configure(self, config: BotConfig) -> list[_Tunnel]:
        """Adopt `config`'s tunnels; returns the ones it no longer has, to be stopped."""
        old, self._tunnels, stale = self._tunnels, {}, []
        for s in config.services:
            if not isinstance(s, DatabaseTunnelService):
                continue
            key, kept = tunnel_key(config, s), old.pop(s.name, None)
            if kept is not None and kept.key == key and not _failed(kept):
                self._tunnels[s.name] = kept
                log.info("database-tunnel %s: unchanged, its listener stays", s.name)
                continue
            if kept is not None:
                stale.append(kept)
            ctx = TunnelContext(config, s, CredentialsHolder(s.name), self.health)
            self._tunnels[s.name] = _Tunnel(key, ctx)
        return stale + list(old.values())

    def start(self) -> None:
        """Start every tunnel not running yet."""
        if self.runner is None:
            return
        for t in self._tunnels.values():
            if t.task is None:
                self.health.block(t.ctx.service.name, "not listening yet")
                t.task = asyncio.ensure_future(_run_tunnel(self.runner, t.ctx))

    async def stop_all(self) -> None:
        """Stop every tunnel; the next `configure` starts them afresh."""
        tunnels, self._tunnels = list(self._tunnels.values()), {}
        await _stop(tunnels)


def _failed(t: _Tunnel) -> bool:
    """Its runner ended (the local proxy failed): a reload starts it again."""
    return t.task is not None and t.task.done()


async def _stop(tunnels: list[_Tunnel]) -> None:
    tasks = [t.task for t in tunnels if t.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _run_tunnel(runner: TunnelRunner, ctx: TunnelContext) -> None:
    try:
        await runner(ctx)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        if isinstance(e, BindError):  # the operator's to fix: no traceback
            log.error("database-tunnel %s: the local proxy failed: %s", ctx.service.name, e)
        else:
            log.exception("database-tunnel %s: the local proxy failed", ctx.service.name)
        ctx.health.set(ctx.service.name, UNHEALTHY, f"local proxy failed: {e}")
        ctx.health.block(ctx.service.name, f"not listening: the local proxy failed: {e}")
