"""Types shared by both relay builds: close reasons and the counters snapshot.

Reason names are public API (they reach the audit log and metrics labels); they match
mwi_relay_reason_name() in csrc/mwi_relay.c exactly.
"""

from __future__ import annotations

from typing import NamedTuple

REASON_EOF = "eof"  # both directions ended cleanly, half-closes propagated
REASON_RESET_A = "reset_a"  # side A reset (or vanished while being written to)
REASON_RESET_B = "reset_b"
REASON_IDLE_TIMEOUT = "idle_timeout"
REASON_CLOSE_TIMEOUT = "close_timeout"  # one side closed, the other did not follow in time
REASON_CLOSED = "closed"  # Relay.close() or engine shutdown
REASON_ERROR = "error"  # anything else; Relay.errno says what

REASONS = (
    REASON_EOF,
    REASON_RESET_A,
    REASON_RESET_B,
    REASON_IDLE_TIMEOUT,
    REASON_CLOSE_TIMEOUT,
    REASON_CLOSED,
    REASON_ERROR,
)


class RelayStats(NamedTuple):
    """Counters of one relay, read in bulk. Bytes count what the receiver was given."""

    bytes_a_to_b: int
    bytes_b_to_a: int
    chunks_a_to_b: int
    chunks_b_to_a: int


def timeout_ms(seconds: float | None) -> int:
    """Seconds (None or 0 = no timeout) as whole milliseconds, at least 1."""
    if not seconds:
        return 0
    if seconds < 0:
        raise ValueError("timeouts must be positive")
    return max(1, min(int(seconds * 1000), 2**32 - 1))


class AcceptorStats(NamedTuple):
    """Counters of one Acceptor, read in bulk."""

    accepted: int  # connections taken from the listen queue
    handed: int  # ...given to on_accept (after their handshake, with TLS)
    handshake_failed: int  # TLS failures and peers that left mid-handshake
    handshake_timeouts: int
    accept_errors: int  # accept() failures (EMFILE, ...): accepting pauses briefly
    handshaking: int  # handshakes in progress now
