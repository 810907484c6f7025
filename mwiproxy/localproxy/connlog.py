"""One client connection of the local proxy, from accept to close: it times the setup,
records the outcome in the metrics, and writes the connection's one log line at the end
(logger "mwiproxy.localproxy", INFO; never per chunk).

The line's fields go in the record's `extra` (the JSON log format puts them at the top
level) and in the message too, so a text log reads the same:

    connection closed: service=pg1 mode=tunnel identity=bot-ci db_user=alice
    db_name=app result=success reason=eof client_to_server=1234 server_to_client=56789
    duration=1.234s setup=0.012s

`identity` is the certificate's user (the bot's), `setup` the time from accept to the
first byte of the answer sent to the client, `reason` the relay's close reason (eof,
reset_client, reset_server, idle_timeout, close_timeout, closed, error) or, for a
connection refused before relaying, the refusal reason of the metrics.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from mwiproxy import _native
from mwiproxy.localproxy.creds import CredentialsError, TLSCredentials
from mwiproxy.metrics.localproxy import (
    RESULT_ERROR,
    RESULT_REFUSED,
    RESULT_SUCCESS,
    LocalProxyMetricsSink,
)
from mwiproxy.wire import postgres as pg

if TYPE_CHECKING:
    from mwiproxy.relay.pipe import PipeStats

log = logging.getLogger("mwiproxy.localproxy")

# the relay's side a is the client, b the cluster
_REASONS = {_native.REASON_RESET_A: "reset_client", _native.REASON_RESET_B: "reset_server"}


class Connection:
    """What is known of one connection; `refused`, `failed` or `relayed` end it."""

    def __init__(self, metrics: LocalProxyMetricsSink, service: str, mode: str,
                 db_user: str = "", db_name: str = "") -> None:
        self._metrics = metrics
        self.service, self.mode = service, mode
        self.identity = ""
        self.db_user, self.db_name = db_user, db_name
        self._accepted = time.monotonic()
        self._setup: float | None = None
        self._open = False

    def startup(self, first: pg.FirstPacket) -> None:
        """A PostgreSQL StartupMessage names the user and database (tunnel mode: in the
        clear; in non-tunnel mode they travel inside the client's TLS)."""
        if not first.is_startup:
            return
        with contextlib.suppress(pg.ProtocolError):
            params = pg.parse_startup(first.raw)
            self.db_user = params.get("user", self.db_user)
            self.db_name = params.get("database", self.db_name)

    def credentials(self, creds: TLSCredentials) -> None:
        """The certificate presented or carried: whose it is, and its route's defaults."""
        with contextlib.suppress(CredentialsError):
            self.identity = creds.identity.user
            route = creds.identity.route
            if route is not None:
                self.db_user = self.db_user or route.username
                self.db_name = self.db_name or route.database

    def dialed(self, seconds: float | None) -> None:
        """TCP + TLS to the cluster took `seconds` (None: it failed)."""
        if seconds is None:
            self._metrics.dial_failed(self.service, self.mode)
        else:
            self._metrics.dialed(self.service, self.mode, seconds)

    def answered(self) -> None:
        """The first byte from the cluster was sent to the client."""
        if self._setup is None:
            self._setup = time.monotonic() - self._accepted
            self._metrics.first_byte(self.service, self.mode, self._setup)

    def refused(self, reason: str) -> None:
        """Refused before relaying (here or by the cluster)."""
        self._metrics.connection(self.service, self.mode, RESULT_REFUSED)
        self._metrics.refused(self.service, reason)
        self._log(RESULT_REFUSED, reason)

    def failed(self, reason: str = "upstream_unreachable") -> None:
        """The cluster could not be reached (dial or TLS failed)."""
        self._metrics.connection(self.service, self.mode, RESULT_ERROR)
        self._log(RESULT_ERROR, reason)

    def relaying(self) -> None:
        self._metrics.connection(self.service, self.mode, RESULT_SUCCESS)
        self._metrics.opened(self.service, self.mode)
        self._open = True

    def relayed(self, stats: PipeStats) -> None:
        """The relay ended (or was cut): the line with its bytes and reason."""
        if self._open:
            self._open = False
            self._metrics.closed(self.service, self.mode, time.monotonic() - self._accepted)
        reason = _REASONS.get(stats.reason, stats.reason or _native.REASON_CLOSED)
        self._log(RESULT_SUCCESS, reason, stats.bytes_a_to_b, stats.bytes_b_to_a)

    def _log(self, result: str, reason: str, up: int = 0, down: int = 0) -> None:
        duration = time.monotonic() - self._accepted
        setup = "-" if self._setup is None else f"{self._setup:.3f}s"
        fields = {"service": self.service, "mode": self.mode, "identity": self.identity,
                  "db_user": self.db_user, "db_name": self.db_name, "result": result,
                  "close_reason": reason, "bytes_client_to_server": up,
                  "bytes_server_to_client": down, "duration_seconds": round(duration, 6),
                  "setup_seconds": None if self._setup is None else round(self._setup, 6)}
        log.info("connection closed: service=%s mode=%s identity=%s db_user=%s db_name=%s "
                 "result=%s reason=%s client_to_server=%d server_to_client=%d "
                 "duration=%.3fs setup=%s", self.service, self.mode, self.identity or "-",
                 self.db_user or "-", self.db_name or "-", result, reason, up, down,
                 duration, setup, extra=fields)
