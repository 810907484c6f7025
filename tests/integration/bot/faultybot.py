"""`mwibot` with test-only faults: `python -m tests.integration.bot.faultybot ARGS...`.

- MWIBOT_TEST_CALL_TIMEOUT: the bot's cluster call timeout in seconds (mwibot waits
  15 s for an answer; a test losing answers on purpose should not wait that long).
- MWIBOT_TEST_FULL_DISK: the path of a control file. While it exists, every `os.write`
  to a file whose path starts with the path written in it fails with ENOSPC (errno 28),
  as on a full disk. This works as root too (chmod does not stop root) and can be
  switched on and off while the bot runs. The bot's files are all written with
  `os.write` (bot/destinations.py, bot/state.py).
"""

from __future__ import annotations

import errno
import os
import sys


def _refuse_writes_under(control: str) -> None:
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:  # type: ignore[type-arg]
        try:
            with open(control) as f:
                prefix = f.read().strip()
        except FileNotFoundError:
            prefix = ""
        if prefix:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write


def main() -> int:
    timeout = os.environ.get("MWIBOT_TEST_CALL_TIMEOUT")
    if timeout:
        from mwiproxy.bot import cluster

        cluster.CALL_TIMEOUT = float(timeout)
    control = os.environ.get("MWIBOT_TEST_FULL_DISK")
    if control:
        _refuse_writes_under(control)
    from mwiproxy.cli.mwibot import main as mwibot_main

    return mwibot_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
