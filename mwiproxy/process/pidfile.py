"""Which process owns what: the `--pid-file` a service manager reads, and the lock that
keeps a second cluster off a data dir another one is using.

The pid file is written once the service is listening (a manager that reads it then
finds a process that serves) and removed on exit, unless another process wrote it
since. One that names a live process refuses the start; a stale one is replaced.

The data dir lock is `flock` on `<data dir>/mwiproxy.lock`, holding the pid of its
owner. The kernel drops it when the process dies, however it dies, so a crash never
leaves a data dir locked; the file itself stays (removing it would race a new owner).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "mwiproxy.lock"


class InUse(ValueError):
    """Another live process holds the pid file or the data dir; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class PidFile:
    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._written = False

    def check(self) -> None:
        """InUse when the file names a live process other than this one."""
        if self.path is None:
            return
        pid = _read_pid(self.path)
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise InUse(f"pid file {self.path} names process {pid}, which is running: "
                        "is this service already started?")

    def write(self) -> None:
        if self.path is None:
            return
        self.check()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)  # a reader never sees a half-written file
        self._written = True

    def remove(self) -> None:
        if self.path is None or not self._written:
            return
        if _read_pid(self.path) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._written = False


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise InUse naming the holder; nothing else in the data dir
        is touched before this."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self.path)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise InUse(f"data dir {self.path.parent} is in use by {who} (it holds "
                        f"{self.path}): stop that cluster first, or give this one "
                        "another data dir") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
