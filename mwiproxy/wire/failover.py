"""The order in which several cluster addresses are tried (`--proxy=a:3080,b:3080`).

Failover (the bot, the agent, mwictl): the address that worked last comes first, the
others follow in the order given; a caller walks `order()` and reports each outcome
with `worked` or `failed`. The state is one index, so a cluster process that died costs
one failed dial per caller that had not yet heard of it, and new calls go to the live
one at once.

Spread (the local proxy's new connections, `spread=True`): each `order()` starts at the
next healthy address in turn (round-robin), so the sessions of one local proxy share
the cluster processes; an address that failed is put last for `retry_after` seconds
(still tried, after the healthy ones: failover is kept), then it takes its turn again,
and one success makes it healthy at once. No I/O here: the local proxy (asyncio) and
the blocking callers share it; `clock` is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

RETRY_AFTER = 5.0  # seconds a failed address waits behind the healthy ones (spread)


class FailoverOrder:
    def __init__(self, addresses: Sequence[str], *, spread: bool = False,
                 retry_after: float = RETRY_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not addresses:
            raise ValueError("no cluster address")
        self.addresses = tuple(addresses)
        self.spread = spread
        self._preferred = 0
        self._next = 0  # spread: where the next order() starts
        self._failed_at: dict[str, float] = {}  # spread: addresses that failed, and when
        self._retry_after = retry_after
        self._clock = clock

    def __len__(self) -> int:
        return len(self.addresses)

    @property
    def preferred(self) -> str:
        return self.addresses[self._preferred]

    def order(self) -> list[str]:
        """Every address once: failover, the one that worked last then the rest as
        given; spread, the healthy ones from the next in turn, then the failed ones."""
        if not self.spread:
            first = self._preferred
            return [self.addresses[first], *(a for i, a in enumerate(self.addresses)
                                              if i != first)]
        start = self._next
        self._next = (self._next + 1) % len(self.addresses)
        turn = [*self.addresses[start:], *self.addresses[:start]]
        now = self._clock()
        down = {a for a, at in self._failed_at.items() if now - at < self._retry_after}
        return [a for a in turn if a not in down] + [a for a in turn if a in down]

    def worked(self, address: str) -> None:
        self._preferred = self.addresses.index(address)
        self._failed_at.pop(address, None)

    def failed(self, address: str) -> None:
        """Move past a failed preferred address, so the next caller starts elsewhere."""
        if self.spread:
            self._failed_at[address] = self._clock()
        if self.addresses[self._preferred] == address and len(self.addresses) > 1:
            self._preferred = (self._preferred + 1) % len(self.addresses)
