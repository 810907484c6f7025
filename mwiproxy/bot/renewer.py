"""The renewal loops: the bot identity, then every output, each on its own timer.

- The bot identity is joined once (or loaded from `storage`) and renewed every
  `renewal_interval` (±10% jitter); `identity` outputs are rewritten after each renewal.
- Each `database` output gets a fresh key and certificate every interval (its own
  `renewal_interval` when set), rendered in its `format` and published atomically;
  `database-tunnel` services get the same, kept in memory (`bot/tunnels.py`).
- A failure (cluster unreachable, destination unwritable, access denied) leaves the
  last good files in place, marks the service unhealthy with the reason, and retries
  with exponential backoff capped at the interval.
- A bot renewal whose reply is lost, or whose result `storage` refuses, is retried the
  same way with the stored next key (bot/keeper.py); a storage failure is logged at
  ERROR and names the path and errno on /readyz.
- A lock, or an expired identity, stops everything (`BotStopped`): every service turns
  unhealthy with the reason and nothing is retried until the operator acts.

Health (metrics/diag.py): each service's readiness follows the credentials it serves, so it
is ready as soon as they are written (or found valid on disk, or loaded from storage)
and until they expire - a failing renewal only marks it unhealthy (`degraded` overall).
A reload builds a new Renewer on the same registry and keeps what is known: statuses
carry over, and what each output serves is read again from its files (a tunnel kept
across the reload: from its credentials holder, which the daemon's TunnelSet keeps).

Blocking work (cluster calls, file writes, reload actions) runs in worker threads so the
event loop - and the diagnostics server on it - stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from mwiproxy.auth.errors import AuthError
from mwiproxy.bot.actions import ActionError, run_reload
from mwiproxy.bot.cluster import is_transient
from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.destinations import DestinationError, DirectoryDestination
from mwiproxy.bot.keeper import BotStopped, IdentityKeeper, stamp
from mwiproxy.bot.outputs import TLS_CERT, render_database_output, render_identity_output
from mwiproxy.bot.schedule import Backoff, next_renewal
from mwiproxy.bot.state import BotIdentity, StorageUnavailable
from mwiproxy.bot.tunnels import CredentialsHolder, TunnelSet
from mwiproxy.config.bot import (
    BotConfig,
    DatabaseService,
    DatabaseTunnelService,
    IdentityService,
    ServiceConfig,
)
from mwiproxy.config.durations import format_duration
from mwiproxy.metrics.diag import HEALTHY, INITIALIZING, UNHEALTHY, HealthRegistry
from mwiproxy.metrics.names import (
    RESULT_FAILURE,
    RESULT_SUCCESS,
    BotMetricsSink,
    NoopBotMetrics,
)

__all__ = ["BOT_IDENTITY", "BotStopped", "Output", "Renewer", "build_outputs"]

log = logging.getLogger("mwiproxy.bot")

BOT_IDENTITY = "bot-identity"  # health and metrics name of the bot's own identity
ONESHOT_ATTEMPTS = 3
ONESHOT_RETRY = timedelta(milliseconds=500)
T = TypeVar("T")


@dataclass
class Output:
    """One configured service and where its credentials go."""

    service: ServiceConfig
    ttl: timedelta
    interval: timedelta
    destination: DirectoryDestination | None = None
    holder: CredentialsHolder | None = None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def kind(self) -> str:
        return self.service.type

    def describe(self) -> str:
        s = self.service
        if isinstance(s, IdentityService):
            return "identity"
        where = f"{s.service}/{s.database}" if s.database else s.service
        return f"{s.type} {where}" + (f" as {s.username}" if s.username else "")


def build_outputs(config: BotConfig, holders: dict[str, CredentialsHolder]) -> list[Output]:
    """The outputs of `config`; a tunnel's credentials go to its holder in `holders`."""
    outputs = []
    for s in config.services:
        ttl = s.credential_ttl or config.credential_ttl
        interval = s.renewal_interval or config.renewal_interval
        out = Output(s, ttl, interval)
        if isinstance(s, DatabaseTunnelService):
            out.holder = holders[s.name]
        else:
            out.destination = DirectoryDestination(s.directory.path, s.directory.symlinks)
        outputs.append(out)
    return outputs


class Renewer:
    def __init__(self, config: BotConfig, keeper: IdentityKeeper, *,
                 health: HealthRegistry | None = None,
                 metrics: BotMetricsSink | None = None,
                 tunnel_set: TunnelSet | None = None) -> None:
        self.config = config
        self.keeper = keeper
        self.health = health or HealthRegistry()
        self.metrics: BotMetricsSink = metrics or NoopBotMetrics()
        # the running database-tunnels, owned by the daemon and already configured for
        # `config` (TunnelSet.apply); without one, tunnels only get credentials
        if tunnel_set is None:
            tunnel_set = TunnelSet(None, self.health)
            tunnel_set.configure(config)
        self.tunnel_set = tunnel_set
        self.tunnels = tunnel_set.holders
        self.outputs = build_outputs(config, self.tunnels)
        self._oneshot = False
        self._gate = _IdentityGate()
        self._announce()

    def _announce(self) -> None:
        """What each service serves right now; statuses a reload finds are kept."""
        current = self.keeper.current
        served = [(BOT_IDENTITY, current.not_after if current else None),
                  *((o.name, _served_now(o)) for o in self.outputs)]
        for name, until in served:
            if self.health.get(name) is None:
                self.health.set(name, INITIALIZING)
            if not self.tunnel_set.running(name):  # a kept listener tells its own
                self.health.block(name, "")  # a reload after a stop starts afresh
            self.health.serving(name, until)

    # --- oneshot ------------------------------------------------------------------------

    async def run_once(self) -> None:
        """Join or renew, write every output once; raise on the first failure."""
        if self.tunnels:
            raise ValueError("oneshot cannot serve a database-tunnel (it needs a running bot)")
        self._oneshot = True
        ident = await _retrying(partial(asyncio.to_thread, self.keeper.ensure))
        if self.keeper.renewed_at is None:  # loaded from storage: renew it now
            await _retrying(self._renew_bot)
        else:
            await self._write_identity_outputs(ident)
        for out in self._issued_outputs():
            await _retrying(partial(self._renew_output, out))

    # --- daemon -------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew until cancelled; raises BotStopped when renewing cannot go on.

        Cancelled (a reload, the shutdown), it leaves the tunnels to their owner; when
        renewal stops for good, it stops them too (nobody would renew their credentials)."""
        try:
            await self._establish()
            self.tunnel_set.start()
            loops = [self._bot_loop()] + [self._output_loop(o) for o in self._issued_outputs()]
            await _supervise(loops)
        except BotStopped as e:
            self._stop_all(str(e))
            await self.tunnel_set.stop_all()
            raise
        except Exception:
            await self.tunnel_set.stop_all()
            raise

    async def _establish(self) -> BotIdentity:
        backoff = Backoff(self.config.renewal_interval)
        while True:
            before = self.keeper.renewed_at
            try:
                ident = await asyncio.to_thread(self.keeper.ensure)
            except Exception as e:
                if not is_transient(e):
                    raise
                delay = backoff.next()
                self.health.set(BOT_IDENTITY, UNHEALTHY, _reason(e))
                log.log(_level(e), "cannot join or load the bot identity (%s); retrying in %s",
                        _reason(e), _human(delay))
                await asyncio.sleep(delay.total_seconds())
                continue
            self.health.serving(BOT_IDENTITY, ident.not_after)
            if self.keeper.renewed_at != before:  # joined just now: as good as a renewal
                self.health.set(BOT_IDENTITY, HEALTHY)
            return ident

    async def _bot_loop(self) -> None:
        backoff = Backoff(self.config.renewal_interval)
        delay = self._first_bot_delay()
        if delay:
            await self._write_identity_outputs(self.keeper.current)
        while True:
            await asyncio.sleep(delay.total_seconds())
            try:
                ident = await self._renew_bot()
                delay = next_renewal(self.config.renewal_interval, ident.not_after)
                backoff.reset()
            except BotStopped:
                raise
            except Exception as e:
                delay = backoff.next()
                self._failed(BOT_IDENTITY, "bot", e, delay)

    def _first_bot_delay(self) -> timedelta:
        if self.keeper.renewed_at is None:
            return timedelta(0)
        since = timedelta(seconds=time.monotonic() - self.keeper.renewed_at)
        return max(self.config.renewal_interval - since, timedelta(0))

    async def _output_loop(self, out: Output) -> None:
        backoff = Backoff(out.interval)
        while True:
            try:
                creds = await self._renew_output(out)
                delay = next_renewal(out.interval, creds.not_after)
                backoff.reset()
            except BotStopped:
                raise
            except Exception as e:
                delay = backoff.next()
                self._failed(out.name, out.kind, e, delay)
            await asyncio.sleep(delay.total_seconds())

    # --- one renewal --------------------------------------------------------------------

    async def _renew_bot(self) -> BotIdentity:
        async def renew() -> BotIdentity:
            async with self._gate.renewing():
                return await asyncio.to_thread(self.keeper.renew)

        ident = await self._timed(BOT_IDENTITY, "bot", renew)
        self.health.serving(BOT_IDENTITY, ident.not_after)
        self.health.set(BOT_IDENTITY, HEALTHY)
        self.metrics.output_renewed(BOT_IDENTITY, ident.not_after)
        log.info("renewed the bot identity (bot %s): expires %s (in %s), generation %d",
                 ident.bot_name, stamp(ident.not_after), _until(ident.not_after),
                 ident.generation)
        await self._write_identity_outputs(ident)
        return ident

    async def _write_identity_outputs(self, ident: BotIdentity | None) -> None:
        """Rewrite `identity` outputs with the bot identity; failures are per output."""
        if ident is None:
            return
        for out in self.outputs:
            if isinstance(out.service, IdentityService):
                try:
                    await self._publish(out, ident.creds, ident.generation)
                except Exception as e:
                    if self._oneshot:
                        raise
                    self._failed(out.name, out.kind, e, None)

    async def _renew_output(self, out: Output) -> Credentials:
        s = out.service
        assert isinstance(s, DatabaseService | DatabaseTunnelService)
        async def issue() -> tuple[BotIdentity, Credentials]:
            # never with an identity being replaced: the cluster would refuse it as of
            # an older generation (a false renewal failure, and an alert)
            async with self._gate.using():
                ident = self.keeper.current
                assert ident is not None
                return ident, await asyncio.to_thread(
                    self.keeper.client.issue_database, ident, service=s.service,
                    database=s.database, username=s.username, ttl=out.ttl)

        ident, creds = await self._timed(out.name, out.kind, issue)
        await self._publish(out, creds, ident.generation)
        return creds

    async def _publish(self, out: Output, creds: Credentials, generation: int) -> None:
        if out.holder is not None:
            out.holder.update(creds)
        else:
            assert out.destination is not None
            files = (render_database_output(creds, out.service.format)
                     if isinstance(out.service, DatabaseService)
                     else render_identity_output(creds))
            try:
                await asyncio.to_thread(out.destination.write_bundle, files)
            except OSError as e:  # a full disk, say: /readyz and the log name the place
                raise DestinationError(f"cannot write the files of output {out.name} to "
                                       f"{out.destination.path} (errno {e.errno}, "
                                       f"{e.strerror})") from e
        self.health.serving(out.name, creds.not_after)
        self.health.set(out.name, HEALTHY)
        self.metrics.output_renewed(out.name, creds.not_after)
        target = out.destination.path if out.destination else "memory"
        log.info("renewed output %s (%s) -> %s: expires %s (in %s), bot generation %d",
                 out.name, out.describe(), target, stamp(creds.not_after),
                 _until(creds.not_after), generation)
        await self._after_publish(out)

    async def _after_publish(self, out: Output) -> None:
        action = getattr(out.service, "reload", None)
        if action is None or out.destination is None:
            return
        try:
            await asyncio.to_thread(run_reload, action, service=out.name,
                                    destination=out.destination.path)
        except ActionError as e:
            log.warning("output %s: %s (the new files are in place)", out.name, e)

    async def _timed(self, name: str, kind: str, step: Callable[[], Awaitable[T]]) -> T:
        start = time.monotonic()
        ok = False
        try:
            result = await step()
            ok = True
            return result
        finally:
            self.metrics.task_iteration(kind, name, ok, time.monotonic() - start)
            self.metrics.renewal(RESULT_SUCCESS if ok else RESULT_FAILURE)

    # --- reporting ----------------------------------------------------------------------

    def _failed(self, name: str, kind: str, error: Exception, retry: timedelta | None) -> None:
        reason = _reason(error)
        self.health.set(name, UNHEALTHY, reason)
        when = f"retrying in {_human(retry)}" if retry is not None else "will retry"
        log.log(_level(error), "%s %s: renewal failed: %s; %s (the last good credentials "
                "stay in place)", kind, name, reason, when)
        if not isinstance(error, AuthError | OSError | DestinationError | ValueError):
            log.debug("%s %s: unexpected error", kind, name, exc_info=error)

    def _stop_all(self, reason: str) -> None:
        log.error("renewal stopped: %s", reason)
        for name in [BOT_IDENTITY, *(o.name for o in self.outputs)]:
            self.health.set(name, UNHEALTHY, reason)
            self.health.block(name, reason)  # a locked bot's certificates are refused

    def _issued_outputs(self) -> list[Output]:
        return [o for o in self.outputs if not isinstance(o.service, IdentityService)]


async def _supervise(loops: Sequence[Awaitable[None]]) -> None:
    """Run loops that never return; the first to raise cancels the others."""
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _IdentityGate:
    """Outputs are issued with the bot identity while no renewal replaces it: a renewal
    waits for the issues in flight and holds new ones back until it is done."""

    def __init__(self) -> None:
        self._users = 0
        self._renewing = False
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def using(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._renewing)
            self._users += 1
        try:
            yield
        finally:
            async with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._renewing)
            self._renewing = True
            await self._cond.wait_for(lambda: self._users == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._renewing = False
                self._cond.notify_all()


async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
    """Oneshot: a few quick attempts for transient errors, then the error itself."""
    backoff = Backoff(ONESHOT_RETRY * 4, base=ONESHOT_RETRY)
    for attempt in range(1, ONESHOT_ATTEMPTS + 1):
        try:
            return await step()
        except Exception as e:
            if attempt == ONESHOT_ATTEMPTS or not is_transient(e):
                raise
            log.warning("attempt %d failed (%s); retrying", attempt, _reason(e))
            await asyncio.sleep(backoff.next().total_seconds())
    raise AssertionError("unreachable")


def _served_now(out: Output) -> datetime | None:
    """Until when the certificate an output already holds (from a previous run or
    before a reload: on disk, or in a tunnel's holder kept across it) is valid; None
    when there is none it can read."""
    if out.holder is not None:
        try:
            return out.holder.current().not_after
        except LookupError:
            return None
    if out.destination is None:
        return None
    try:
        pem = Path(out.destination.path, TLS_CERT).read_bytes()
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except (OSError, ValueError):
        return None


def _level(error: BaseException) -> int:
    """A disk refusing the bot identity needs a person soon (the identity will expire)."""
    return logging.ERROR if isinstance(error, StorageUnavailable) else logging.WARNING


def _reason(error: BaseException) -> str:
    return error.message if isinstance(error, AuthError) else (str(error) or type(error).__name__)


def _until(when: datetime) -> str:
    return _human(max(when - datetime.now(UTC), timedelta(0)))


def _human(delay: timedelta) -> str:
    return format_duration(timedelta(seconds=round(delay.total_seconds(), 1 if delay < timedelta(seconds=10) else 0)))
