"""The pure build's relay engines: no worker thread, one engine per loop that only keeps
the loop's counters (twin of the native engine registry in _relay.pyx)."""

from __future__ import annotations

import asyncio
import weakref

from .counters import PyCounterTable
from .workers import check_workers


class Engine:
    """The pure build has no worker: an engine here only keeps the loop's counters."""

    def __init__(self) -> None:
        self.counters = PyCounterTable()


_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Engine] = \
    weakref.WeakKeyDictionary()


def engines_for(loop: asyncio.AbstractEventLoop, workers: int | None = None,
                **config: object) -> tuple[Engine, ...]:
    """The engines of `loop`: always one here. `workers` is checked and ignored (the
    loop itself copies every byte, there is no worker thread to multiply); `config`
    only matters natively."""
    engine = _engines.get(loop)
    if engine is None:
        if workers is not None:
            check_workers(workers)
        engine = _engines[loop] = Engine()
    return (engine,)


def engine_for(loop: asyncio.AbstractEventLoop, workers: int | None = None,
               **config: object) -> Engine:
    """The engine of `loop` (created on first use; see engines_for)."""
    return engines_for(loop, workers, **config)[0]


def close_engine(loop: asyncio.AbstractEventLoop) -> None:
    _engines.pop(loop, None)
