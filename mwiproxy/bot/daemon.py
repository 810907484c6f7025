"""`mwibot start`: the long-running bot (renewer + diagnostics) and its oneshot form.

Signals: SIGHUP re-reads the config file; a file that fails to load is reported and the
running configuration stays (a bad edit never takes the bot down). A reload keeps each
database tunnel whose settings did not change listening, with its open connections and
credentials (bot/tunnels.py TunnelSet); removed ones drain, changed ones restart. SIGTERM
and SIGINT stop it (its database tunnels drain). The bot identity is kept across a reload unless
the storage, the cluster address or the onboarding settings changed. Under systemd
(`NOTIFY_SOCKET`) it reports READY/RELOADING/STOPPING; `pid_file` is written once it
runs and removed on exit.

When renewal stops for good (a lock, an expired identity) and diagnostics are on, the
process stays up with /readyz unhealthy and the reason, so monitoring sees why; without
diagnostics it exits 1 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from mwiproxy.bot.keeper import BotStopped, IdentityKeeper, keeper_key
from mwiproxy.bot.renewer import BOT_IDENTITY, Renewer
from mwiproxy.bot.tunnels import (
    TunnelContext,
    TunnelRunner,
    TunnelSet,
    check_tunnels_servable,
)
from mwiproxy.config.bot import BotConfig
from mwiproxy.metrics.diag import DiagServer, HealthRegistry
from mwiproxy.metrics.localproxy import LocalProxyMetrics
from mwiproxy.metrics.names import BotMetrics
from mwiproxy.metrics.registry import process_registry
from mwiproxy.process import binding
from mwiproxy.process.pidfile import PidFile
from mwiproxy.process.sdnotify import Notifier

log = logging.getLogger("mwiproxy.bot")

ConfigLoader = Callable[[], BotConfig]


async def run_oneshot(config: BotConfig) -> None:
    """Write every output once; raises with the operator's message on failure."""
    await Renewer(config, IdentityKeeper(config)).run_once()
    log.info("oneshot: all outputs written")


class BotDaemon:
    def __init__(self, config: BotConfig, reload: ConfigLoader | None = None,
                 pid_file: str = "", tunnel_runner: TunnelRunner | None = None) -> None:
        self.config = config
        self._tunnel_runner = tunnel_runner
        self._reload = reload
        self._pid_file = PidFile(pid_file)
        self._notifier = Notifier.from_env()
        self.health = HealthRegistry()
        self.registry: CollectorRegistry = process_registry()
        self.metrics = BotMetrics(self.registry)
        # the database tunnels' local proxies, on the same /metrics (made in run(): their
        # bytes are read from the loop's relay engine)
        self.proxy_metrics: LocalProxyMetrics | None = None
        self.keeper = IdentityKeeper(config)
        self.renewer: Renewer | None = None
        # the database tunnels outlive each Renewer: a reload keeps the unchanged ones
        runner = self._measured_tunnels if tunnel_runner is not None else None
        self.tunnels = TunnelSet(runner, self.health)
        self._task: asyncio.Task[None] | None = None
        self._diag: DiagServer | None = None
        self._diag_addr = ""
        # "reload", "stop", or a renewer task that finished
        self._events: asyncio.Queue[str | asyncio.Task[None]] = asyncio.Queue()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raises when the bot cannot start or must stop."""
        loop = asyncio.get_running_loop()
        if self.proxy_metrics is None:
            self.proxy_metrics = LocalProxyMetrics(self.registry, loop)
        for sig, name in ((signal.SIGHUP, "reload"), (signal.SIGTERM, "stop"),
                          (signal.SIGINT, "stop")):
            loop.add_signal_handler(sig, self._events.put_nowait, name)
        try:
            await self._apply(self.config)
            self._pid_file.write()
            self._notifier.ready(self._status())
            while True:
                event = await self._events.get()
                if event == "stop":
                    self._notifier.stopping("stopping")
                    break
                if event == "reload":
                    self._notifier.reloading()
                    await self._reload_config()
                    self._notifier.ready(self._status())
                elif isinstance(event, asyncio.Task) and event is self._task:
                    self._task = None
                    self._check_renewer_result(event)
        finally:
            await self._shutdown()
            self._pid_file.remove()

    def _status(self) -> str:
        names = [s.name or s.type for s in self.config.services]
        return f"mwibot: {len(names)} service(s): {', '.join(names)}"

    def _check_renewer_result(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, BotStopped) and self._diag is not None:
            log.error("renewal stopped; diagnostics stay up at %s:%d (send SIGHUP after "
                      "fixing the cause)", self._diag.host, self._diag.port)
            return
        if error is not None:
            raise error

    async def _reload_config(self) -> None:
        if self._reload is None:
            log.warning("SIGHUP: no config file to reload (started from flags)")
            return
        try:
            config = self._reload()
            check_tunnels_servable(config, self._tunnel_runner)
        except Exception as e:
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", e)
            return
        log.info("SIGHUP: configuration reloaded")
        await self._apply(config)

    async def _apply(self, config: BotConfig) -> None:
        await self._stop_renewer()
        if keeper_key(config) != keeper_key(self.config):
            self.keeper = IdentityKeeper(config)
        self.keeper.config = config
        await self.tunnels.apply(config)  # before forgetting: a stopped one reports
        self._forget_removed(config)
        self.config = config
        await self._set_diag(config.diag_addr)
        self.renewer = Renewer(config, self.keeper, health=self.health, metrics=self.metrics,
                               tunnel_set=self.tunnels)
        self._task = asyncio.ensure_future(self.renewer.run())
        self._task.add_done_callback(self._events.put_nowait)

    async def _measured_tunnels(self, ctx: TunnelContext) -> None:
        """The tunnel runner, with the bot's local proxy metrics in its context."""
        assert self._tunnel_runner is not None
        await self._tunnel_runner(dataclasses.replace(ctx, proxy_metrics=self.proxy_metrics))

    def _forget_removed(self, config: BotConfig) -> None:
        keep = {BOT_IDENTITY, *(s.name for s in config.services)}
        for name in set(self.health.snapshot()) - keep:
            self.health.remove(name)
            self.metrics.forget_output(name)

    async def _set_diag(self, addr: str) -> None:
        current = f"{self._diag.host}:{self._diag.port}" if self._diag else ""
        if self._diag is not None and addr in (current, self._diag_addr):
            return
        if self._diag is not None:
            await self._diag.close()
            self._diag = None
        if addr:
            diag = DiagServer(addr, self.health, self.registry)
            with binding.naming("diag_addr", addr):
                await diag.start()
            self._diag, self._diag_addr = diag, addr

    async def _stop_renewer(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _shutdown(self) -> None:
        await self._stop_renewer()
        await self.tunnels.stop_all()
        if self._diag is not None:
            await self._diag.close()
        log.info("mwibot stopped")
