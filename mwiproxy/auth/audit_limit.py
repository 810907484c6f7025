"""Audit events that anyone can cause, recorded without letting a flood fill the log.

A refused TLS handshake at the cluster port (proxy/refusals.py, `tls.refused`) or a
refused web request (web/app.py, `web.denied`) can be caused by anyone who reaches the
port, so such events pass two token buckets: one per remote IP and one for the whole
port. What the buckets turn away is counted and written as one summary event of the
same type (`suppressed: N`, the top remotes) per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mwiproxy.audit")

# per remote IP: a burst of a client's retries is recorded, a flood is not
PER_REMOTE_RATE = 1.0  # events/s
PER_REMOTE_BURST = 20
# the whole port: many remotes together cannot fill the disk either
TOTAL_RATE = 5.0
TOTAL_BURST = 100
SUMMARY_INTERVAL = 10.0  # s
MAX_REMOTES = 4096  # buckets kept; the oldest is forgotten first
TOP_REMOTES = 10  # remotes named in a summary

Emit = Callable[..., object]


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._stamp = float(burst), now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class LimitedAudit:
    """`record(ip, fields)`: audited via `emit(event, **fields)` while the buckets
    allow, counted otherwise; `what` names the events in the summary ("TLS refusals")."""

    def __init__(self, emit: Emit, event: str, what: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 per_remote: tuple[float, int] = (PER_REMOTE_RATE, PER_REMOTE_BURST),
                 total: tuple[float, int] = (TOTAL_RATE, TOTAL_BURST),
                 interval: float = SUMMARY_INTERVAL) -> None:
        self._emit, self._event, self._what, self._clock = emit, event, what, clock
        self._per_remote, self._interval = per_remote, interval
        self._total = TokenBucket(*total, clock())
        self._buckets: dict[str, TokenBucket] = {}
        self._suppressed: Counter[str] = Counter()
        self._last_summary = clock()
        self._timer: asyncio.TimerHandle | None = None

    def record(self, ip: str, fields: dict[str, Any]) -> None:
        now = self._clock()
        if self._suppressed and now - self._last_summary >= self._interval:
            self.flush()  # the count so far comes before anything newer
        if self._allowed(ip, now):
            self._emit(self._event, **fields)
        else:
            self._count(ip)
            self._schedule_flush()

    def _allowed(self, ip: str, now: float) -> bool:
        bucket = self._buckets.pop(ip, None) or TokenBucket(*self._per_remote, now)
        self._buckets[ip] = bucket  # re-inserted: the dict's order is least recent first
        if len(self._buckets) > MAX_REMOTES:
            del self._buckets[next(iter(self._buckets))]
        # the port-wide bucket is only spent on what the remote's own bucket lets through
        return bucket.take(now) and self._total.take(now)

    def _count(self, ip: str) -> None:
        if ip in self._suppressed or len(self._suppressed) < MAX_REMOTES:
            self._suppressed[ip] += 1
        else:
            self._suppressed["other"] += 1

    def _schedule_flush(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): the next event or flush() reports
            return
        delay = max(0.0, self._interval - (self._clock() - self._last_summary))
        self._timer = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Write the summary of what was not recorded one by one (if anything was not)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_summary = self._clock()
        total = sum(self._suppressed.values())
        if not total:
            return
        top = dict(self._suppressed.most_common(TOP_REMOTES))
        self._suppressed.clear()
        log.warning("%d %s not audited one by one (rate limit)", total, self._what)
        self._emit(self._event, reason=f"rate limited: {total} more {self._what} not "
                   "recorded one by one", suppressed=total, remotes=top)
