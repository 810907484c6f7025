"""The main loop of a long-running command, as a service manager drives it.

- SIGHUP reloads. A reload that fails (a config error, unreadable files) is logged with
  the reason — a ConfigError says file:line — and the running configuration stays.
- SIGTERM and SIGINT drain: stop accepting, give open sessions up to the drain timeout
  to finish, then cut the rest and close. A second SIGTERM/SIGINT cuts at once.
- The pid file is written once the service is up and removed on the way out.
- sd_notify: READY=1 once up and after each reload, RELOADING=1 during one,
  STOPPING=1 when the drain starts, STATUS= the service's own line.

Signal handlers are installed (`Signals()`) before the service starts, so a SIGHUP that
arrives during start-up is queued, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from mwiproxy.process.pidfile import PidFile
from mwiproxy.process.sdnotify import Notifier

log = logging.getLogger("mwiproxy.process")

RELOAD = "reload"
STOP = "stop"
_EVENTS = {signal.SIGHUP: RELOAD, signal.SIGTERM: STOP, signal.SIGINT: STOP}


class Service(Protocol):
    def status(self) -> str: ...

    async def drain(self, timeout: float) -> None: ...

    async def close(self) -> None: ...


class Signals:
    """SIGHUP → RELOAD, SIGTERM/SIGINT → STOP, queued for the main loop."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        for sig, event in _EVENTS.items():
            self._loop.add_signal_handler(sig, self._queue.put_nowait, event)

    async def next(self) -> str:
        return await self._queue.get()

    async def next_stop(self) -> None:
        while await self._queue.get() != STOP:
            log.info("SIGHUP ignored: shutting down")

    def close(self) -> None:
        for sig in _EVENTS:
            self._loop.remove_signal_handler(sig)


async def serve(service: Service, signals: Signals, *,
                reload: Callable[[], Awaitable[None]] | None,
                drain_timeout: Callable[[], float], pid_file: PidFile,
                notifier: Notifier | None = None, ready_line: str = "") -> None:
    """Run a started service until SIGTERM/SIGINT; closes it on every way out.
    `ready_line` goes to stdout once the pid file is written (scripts wait for it)."""
    notifier = notifier or Notifier.from_env()
    try:
        pid_file.write()
        if ready_line:
            print(ready_line, flush=True)
        notifier.ready(service.status())
        while await signals.next() == RELOAD:
            notifier.reloading()
            await _reload(reload)
            notifier.ready(service.status())
        timeout = drain_timeout()
        log.info("stopping: no new connections; open sessions have up to %gs", timeout)
        notifier.stopping(f"draining: open sessions have {timeout:g}s to finish")
        await _drain(service, signals, timeout)
    finally:
        await service.close()
        pid_file.remove()
        signals.close()
        log.info("stopped")


async def _reload(reload: Callable[[], Awaitable[None]] | None) -> None:
    if reload is None:
        log.info("SIGHUP: nothing to reload (no config file)")
        return
    log.info("SIGHUP: reloading")
    try:
        await reload()
    except Exception as e:  # a bad edit must never take the service down
        log.error("SIGHUP: not reloaded, the running configuration stays: %s", e)


async def _drain(service: Service, signals: Signals, timeout: float) -> None:
    draining = asyncio.ensure_future(service.drain(timeout))
    second = asyncio.ensure_future(signals.next_stop())
    try:
        await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():
            log.warning("a second stop signal: cutting open sessions now")
    finally:
        second.cancel()
        if not draining.done():
            await service.close()  # cuts what is left; the drain then returns
        with contextlib.suppress(asyncio.CancelledError):
            await draining
