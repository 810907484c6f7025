"""How many relay engines (native worker threads) an event loop gets, shared by both builds.

Natively each engine is one worker thread with its own epoll, pools and timers
(csrc/mwi_engine.c); a loop with N engines spreads its relays over N threads (a new
relay goes to the engine with the fewest relays), so the proxy uses N cores. The pure
build has no worker: the loop itself copies every byte, N is accepted and ignored.

The default is the number of cores, at most AUTO_CAP: past a handful of cores one
Python loop deciding (auth, routing, audit) is the limit, not the copying.
"""

from __future__ import annotations

import os

AUTO = 0          # "as many as there are cores" (cluster.yaml proxy.workers: 0)
AUTO_CAP = 8      # the most engines AUTO picks
MAX_WORKERS = 64  # the most one may ask for


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> int:
    """`workers` as a count of engines: AUTO (0) is the number of cores (at most
    AUTO_CAP); otherwise 1 .. MAX_WORKERS."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers == AUTO:
        return min(cores(), AUTO_CAP)
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be {AUTO} (one per core) or 1 .. {MAX_WORKERS}, "
                         f"not {workers}")
    return workers


_default = AUTO


def set_default_workers(workers: int) -> None:
    """Engines for loops whose engines are created from now on (the process setting:
    cluster.yaml proxy.workers, `mwibot proxy --workers`); loops already served keep
    theirs."""
    global _default
    check_workers(workers)
    _default = workers


def default_workers() -> int:
    """The engines a new loop gets (AUTO resolved)."""
    return check_workers(_default)
