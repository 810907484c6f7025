"""Free loopback ports for the servers the kit starts.

A port the kernel picks with ``bind(0)`` comes from the ephemeral range, the same range
it draws the source ports of outgoing connections from: between the moment a test picks
it and the moment a server binds it, any connection on the machine may take it (seen in
CI: a local proxy's ``--diag-addr`` "address already in use"). So ports are handed out
from below the ephemeral range, where the kernel never assigns one on its own, walking
from a per-process starting point, so one process hands a port out again only after
walking the whole range. A port is only handed out if it can be bound right now.
"""

from __future__ import annotations

import os
import random
import socket
import threading

_FLOOR = 10_000
_lock = threading.Lock()
_cursor: int | None = None


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_pick() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    global _cursor
    top = _ephemeral_low()
    span = top - _FLOOR
    if span < 1_000:  # an unusual port range: fall back to the kernel's pick
        return _kernel_pick()
    with _lock:
        if _cursor is None:
            _cursor = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big")
                                    ).randrange(span)
        for _ in range(span):
            port = _FLOOR + _cursor % span
            _cursor += 1
            if _bindable(port):
                return port
    return _kernel_pick()
