"""Free loopback ports (the dev kit's, mwiproxy.devkit.ports), and whether one is closed."""

from __future__ import annotations

import socket

from mwiproxy.devkit.ports import free_port

__all__ = ["free_port", "refused"]


def refused(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether a connection to host:port is refused: nobody listens. Anything else is
    False, to be polled again: an accepted connection, a slow machine's timeout, or a
    reset (a connect that raced the listener's close sat in its backlog)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return isinstance(e, ConnectionRefusedError)
    return False
