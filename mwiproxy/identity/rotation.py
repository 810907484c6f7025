"""Certificates that renew themselves: issued with a lifetime, re-issued at a fraction
of it, without a restart.

A `Rotating` holds the current value built around one certificate (a TLS context, a
written identity file) and replaces it when `renew_at` of the certificate's life has
passed — half by default, as the database agents do: a failed renewal then has as long
again to succeed before anything expires. Whoever reads `current` for a new connection
gets the new certificate; connections made before keep the SSL objects (and so the
certificate) they were made with.

The timer is one asyncio task per certificate that sleeps until the next renewal is due
(at most `MAX_SLEEP` at a time, so a wall-clock jump or a suspended host is noticed).
Issuing runs in a worker thread: it generates a key, signs, and may write a file, none
of which belongs on the event loop. A failed issue keeps the current value, is logged
with the time the current certificate expires, and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("mwiproxy.rotation")

T = TypeVar("T")

DEFAULT_RENEW_AT = 0.5
RETRY_MIN = 1.0  # seconds; doubled after each failure up to RETRY_MAX
RETRY_MAX = 60.0
MAX_SLEEP = 300.0
MIN_DELAY = 0.5  # never renew more often than this, whatever a short lifetime says


@dataclass(frozen=True)
class Issued(Generic[T]):
    """What an issue function returns: the value to hand out and its certificate's
    serial number and notAfter."""

    value: T
    serial: int
    not_after: dt.datetime


def renewal_due(issued_at: dt.datetime, not_after: dt.datetime, renew_at: float
                ) -> dt.datetime:
    """When a certificate issued at `issued_at` is due for renewal. Measured from the
    time of issue, not notBefore, which is backdated for clock skew."""
    return issued_at + (not_after - issued_at) * renew_at


class Rotating(Generic[T]):
    def __init__(self, what: str, issue: Callable[[], Issued[T]], *,
                 renew_at: float = DEFAULT_RENEW_AT,
                 on_renew: Callable[[T], None] | None = None) -> None:
        if not 0 < renew_at < 1:
            raise ValueError(f"renew_at must be between 0 and 1, not {renew_at}")
        self.what = what
        self._issue = issue
        self._renew_at = renew_at
        self._on_renew = on_renew
        self._current: Issued[T] | None = None
        self._due = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0

    @property
    def current(self) -> T:
        """The value for new connections (issued now if nothing was issued yet)."""
        if self._current is None:
            self._install(self._timed_issue())
        assert self._current is not None
        return self._current.value

    @property
    def serial(self) -> int:
        assert self._current is not None
        return self._current.serial

    @property
    def not_after(self) -> dt.datetime:
        assert self._current is not None
        return self._current.not_after

    def set_on_renew(self, on_renew: Callable[[T], None]) -> None:
        self._on_renew = on_renew

    def renew_now(self) -> None:
        """Issue a new certificate at once (a CA rotation changed who signs or what is
        trusted); the timer then counts from this one."""
        self._renewed(self._timed_issue())

    def start(self) -> None:
        """Issue now if needed, then keep renewing on the running loop."""
        _ = self.current
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._keep_renewed(), name=f"renew {self.what}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _timed_issue(self) -> tuple[dt.datetime, Issued[T]]:
        issued_at = dt.datetime.now(dt.UTC)
        issued = self._issue()
        if issued.not_after <= issued_at:  # e.g. capped by a CA that has expired
            raise ValueError(f"the new certificate expired on issue ({_fmt(issued.not_after)}"
                             " UTC): check the CA's validity")
        return issued_at, issued

    def _install(self, timed: tuple[dt.datetime, Issued[T]]) -> None:
        issued_at, issued = timed
        self._current = issued
        self._due = max(renewal_due(issued_at, issued.not_after, self._renew_at),
                        issued_at + dt.timedelta(seconds=MIN_DELAY))

    async def _keep_renewed(self) -> None:
        retry = RETRY_MIN
        while True:
            wait = (self._due - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP))
                continue
            try:
                timed = await asyncio.to_thread(self._timed_issue)
            except Exception as e:  # keep the current certificate; try again later
                self._failed(e, retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)
                continue
            retry = RETRY_MIN
            self._renewed(timed)

    def _renewed(self, timed: tuple[dt.datetime, Issued[T]]) -> None:
        self._install(timed)
        self.renewals += 1
        if self._on_renew is not None:
            try:
                self._on_renew(timed[1].value)
            except Exception:  # the value is current; its users pick it up on their own
                log.exception("%s renewed, but putting it in place failed", self.what)
        log.info("%s renewed: serial %x, valid until %s UTC, next renewal at %s UTC",
                 self.what, timed[1].serial, _fmt(timed[1].not_after), _fmt(self._due))

    def _failed(self, e: Exception, retry: float) -> None:
        assert self._current is not None
        expires = self._current.not_after
        expired = dt.datetime.now(dt.UTC) >= expires
        log.log(logging.ERROR if expired else logging.WARNING,
                "could not renew %s (retrying in %.0fs; the current one %s %s UTC): %s",
                self.what, retry, "expired at" if expired else "is valid until",
                _fmt(expires), e)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")
