"""The order in which several cluster addresses are tried (`--proxy=a:3080,b:3080`).

The address that worked last comes first, the others follow in the order given; a
caller walks `order()` and reports each outcome with `worked` or `failed`. The state is
one index, so a cluster process that died costs one failed dial per caller that had not
yet heard of it, and new calls go to the live one at once. No I/O here: the local proxy
(asyncio) and the bot (blocking calls) share it.
"""

from __future__ import annotations

from collections.abc import Sequence


class FailoverOrder:
    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("no cluster address")
        self.addresses = tuple(addresses)
        self._preferred = 0

    def __len__(self) -> int:
        return len(self.addresses)

    @property
    def preferred(self) -> str:
        return self.addresses[self._preferred]

    def order(self) -> list[str]:
        """Every address once: the one that worked last, then the rest as given."""
        first = self._preferred
        return [self.addresses[first], *(a for i, a in enumerate(self.addresses)
                                          if i != first)]

    def worked(self, address: str) -> None:
        self._preferred = self.addresses.index(address)

    def failed(self, address: str) -> None:
        """Move past a failed preferred address, so the next caller starts elsewhere."""
        if self.addresses[self._preferred] == address and len(self.addresses) > 1:
            self._preferred = (self._preferred + 1) % len(self.addresses)
