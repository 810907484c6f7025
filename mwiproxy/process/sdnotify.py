"""sd_notify(3) without libsystemd: one datagram per state change to `$NOTIFY_SOCKET`.

A unit with `Type=notify` counts the service as started at `READY=1`, sees a reload
begin at `RELOADING=1` (with `MONOTONIC_USEC=`, which `Type=notify-reload` requires) and
end at the next `READY=1`, and a stop begin at `STOPPING=1`; `STATUS=` is the line
`systemctl status` shows. Not under systemd (no `NOTIFY_SOCKET`) nothing is sent. A
failed send is logged and never stops the service: the socket belongs to the manager.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("mwiproxy.process")

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str:
    """'@name' is the abstract namespace: a leading NUL byte on the wire."""
    return "\0" + value[1:] if value.startswith("@") else value


class Notifier:
    def __init__(self, socket_path: str = "") -> None:
        self._address = _address(socket_path) if socket_path else ""
        self._shown = socket_path

    @classmethod
    def from_env(cls) -> Notifier:
        """The manager's socket, taken out of the environment so that the commands we
        start (bot reload actions) cannot speak for us."""
        return cls(os.environ.pop(ENV, ""))

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> bool:
        if not self._address:
            return False
        text = "\n".join(f"{key}={' '.join(value.splitlines())}"
                         for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(text.encode(), self._address)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self._shown, e)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def reloading(self, status: str = "reloading") -> bool:
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING="1", MONOTONIC_USEC=str(now_usec), STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)
