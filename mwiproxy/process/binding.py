"""A listener that cannot bind names the setting and the address it was given.

`[Errno 98] Address already in use` does not say which of a process's three ports is
taken; `diag_addr 127.0.0.1:3000: address already in use` does. Every listener a
command opens binds inside `naming(setting, addr)`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

# the errors of bind/listen that the operator fixes by changing the setting
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES,
                          errno.EPERM, errno.EAFNOSUPPORT})


class BindError(OSError):
    """A listener's bind failed: `SETTING ADDR: reason`."""

    def __init__(self, setting: str, addr: str, err: OSError) -> None:
        # the errno's own words: asyncio's and the acceptor's texts repeat the address
        reason = os.strerror(err.errno) if err.errno else str(err)
        super().__init__(err.errno, f"{setting} {addr}: {reason[:1].lower()}{reason[1:]}")
        self.setting, self.addr = setting, addr

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def naming(setting: str, addr: str) -> Iterator[None]:
    """Re-raise a bind failure inside as a BindError naming `setting` and `addr`."""
    try:
        yield
    except BindError:
        raise
    except OSError as err:
        if err.errno not in _BIND_ERRORS:
            raise
        raise BindError(setting, addr, err) from err
