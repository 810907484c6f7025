"""The relay byte counters of one engine, shared by both builds.

Metrics want bytes per label set (service, mode, ...), live sessions included, without
Python per chunk. So each label set gets a slot: a relay started with `counter_slot=N`
adds every chunk it delivers to slot N where it adds to its own counters (the native
worker: csrc/mwi_engine.c, MWI_COUNTER_SLOTS; the pure twin: a list here), and a scrape
reads all slots at once. The key -> slot map lives here, in Python, on the owner's
thread; the sums live with the relays.

Slots are bounded (SLOTS): label sets come from the configuration, so running out means
a bug or an absurd configuration. Then every new key shares slot 0 (reported under the
key ("",) * n), logged once, instead of growing without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("mwiproxy.relay")

SLOTS = 1024  # MWI_COUNTER_SLOTS in csrc/mwi_relay.h
OVERFLOW_SLOT = 0

Key = tuple[str, ...]
Sums = tuple[int, int]  # (a -> b, b -> a)
SlotReader = Callable[[int], Sequence[Sums]]  # the first n slots' sums


class CounterTable:
    """Label tuples -> counter slots, and the bulk read of their sums."""

    def __init__(self, read_slots: SlotReader) -> None:
        self._read_slots = read_slots
        self._slots: dict[Key, int] = {}
        self._overflow: Key | None = None  # the key slot 0 is reported under, once used

    def slot(self, key: Sequence[str]) -> int:
        """The slot of `key`, allocated on first use (slot 0 once the table is full)."""
        key = tuple(key)
        found = self._slots.get(key)
        if found is not None:
            return found
        if len(self._slots) + 1 >= SLOTS:  # slot 0 is kept for the overflow
            if self._overflow is None:
                self._overflow = ("",) * len(key)
                log.warning("relay byte counters: all %d slots are taken (label set %r "
                            "and later ones are counted together under empty labels)",
                            SLOTS - 1, key)
            return OVERFLOW_SLOT
        found = self._slots[key] = len(self._slots) + 1
        return found

    def read(self) -> dict[Key, Sums]:
        """Bytes (a -> b, b -> a) per key, finished and live relays together."""
        keys = list(self._slots.items())  # one step under the GIL: safe from any thread
        n = max((s for _, s in keys), default=0) + 1
        sums = self._read_slots(n)
        out = {key: (int(sums[s][0]), int(sums[s][1])) for key, s in keys}
        if self._overflow is not None:
            extra = sums[OVERFLOW_SLOT]
            a, b = out.get(self._overflow, (0, 0))
            out[self._overflow] = (a + int(extra[0]), b + int(extra[1]))
        return out


class PyCounterTable(CounterTable):
    """The pure build's table: the relays add to lists here, on the loop's thread."""

    def __init__(self) -> None:
        self.sums = [[0, 0] for _ in range(SLOTS)]
        super().__init__(lambda n: [(s[0], s[1]) for s in self.sums[:n]])


def check_slot(slot: int | None) -> None:
    """A relay's counter_slot: None (not counted) or 0 .. SLOTS-1."""
    if slot is not None and not 0 <= slot < SLOTS:
        raise ValueError(f"counter_slot must be 0 .. {SLOTS - 1}, not {slot}")
