"""When to renew next: the interval with jitter, and exponential backoff after failures.

Jitter spreads a fleet of bots started together (e.g. by one deploy) so they do not
renew in lockstep. Backoff is capped at the renewal interval: a bot never waits longer
than it would have without the failure, and it never hammers a cluster that is down.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

JITTER = 0.1
MIN_DELAY = timedelta(milliseconds=100)
MAX_BACKOFF_BASE = timedelta(seconds=1)
EXPIRY_FRACTION = 0.5  # when credentials expire before the interval, renew at half life


def jittered(interval: timedelta, rng: random.Random | None = None) -> timedelta:
    """`interval` ±10%."""
    factor = (rng or random).uniform(1.0 - JITTER, 1.0 + JITTER)
    return interval * factor


def next_renewal(
    interval: timedelta, expires: datetime, now: datetime | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before the next renewal: the jittered interval, sooner if expiry comes first."""
    remaining = expires - (now or datetime.now(UTC))
    delay = jittered(interval, rng)
    if remaining * EXPIRY_FRACTION < delay:
        delay = remaining * EXPIRY_FRACTION
    return max(delay, MIN_DELAY)


class Backoff:
    """Exponential delays: base, 2*base, 4*base, ... capped at `cap` (with jitter)."""

    def __init__(self, cap: timedelta, base: timedelta | None = None,
                 rng: random.Random | None = None) -> None:
        self.cap = max(cap, MIN_DELAY)
        self.base = base if base is not None else min(MAX_BACKOFF_BASE, self.cap / 4)
        self._rng = rng
        self.failures = 0

    def next(self) -> timedelta:
        delay = min(self.base * (2**self.failures), self.cap)
        self.failures = min(self.failures + 1, 32)
        return max(min(jittered(delay, self._rng), self.cap), MIN_DELAY)

    def reset(self) -> None:
        self.failures = 0
