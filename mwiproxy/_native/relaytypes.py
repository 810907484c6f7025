"""Types shared by both relay builds: close reasons and the counters snapshot.

Reason names are public API (they reach the audit log and metrics labels); they match
mwi_relay_reason_name() in csrc/mwi_relay.c exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

REASON_EOF = "eof"  # both directions ended cleanly, half-closes propagated
REASON_RESET_A = "reset_a"  # side A reset (or vanished while being written to)
REASON_RESET_B = "reset_b"
REASON_IDLE_TIMEOUT = "idle_timeout"
REASON_CLOSE_TIMEOUT = "close_timeout"  # one side closed, the other did not follow in time
REASON_CLOSED = "closed"  # Relay.close() or engine shutdown
REASON_ERROR = "error"  # anything else; Relay.errno says what
REASON_REFUSED = "refused"  # the owner refused a held message (Relay.close(reason=...))
REASON_PROTOCOL = "protocol"  # side a broke its protocol's framing (inspected relays)

REASONS = (
    REASON_EOF,
    REASON_RESET_A,
    REASON_RESET_B,
    REASON_IDLE_TIMEOUT,
    REASON_CLOSE_TIMEOUT,
    REASON_CLOSED,
    REASON_ERROR,
    REASON_REFUSED,
    REASON_PROTOCOL,
)
# what the owner may end a relay as (Relay.close(reason=...))
CLOSE_REASONS = (REASON_CLOSED, REASON_REFUSED, REASON_PROTOCOL, REASON_ERROR)
# protocols a relay can inspect (side a's messages): ids of csrc/mwi_inspect.h
INSPECT_PROTOCOLS = {"resp": 1, "mysql": 2, "mongodb": 3}
MONGO_MAX_MESSAGE = 48_000_000  # the server's default maxMessageSizeBytes


def mongo_allowed(allowed: tuple[str, ...] | list[str]) -> bytes:
    """The allowed `$db` names as the C framer takes them: each UTF-8, NUL-terminated."""
    if isinstance(allowed, str | bytes):
        raise TypeError("allowed is a sequence of database names")
    out = bytearray()
    for name in allowed:
        raw = name.encode() if isinstance(name, str) else b""
        if not raw or b"\0" in raw:
            raise ValueError(f"not a database name: {name!r}")
        out += raw + b"\0"
    return bytes(out)


def check_max_message(max_message: int) -> int:
    if not 16 <= max_message <= 0xFFFFFFFF:
        raise ValueError(f"max_message out of range: {max_message!r}")
    return max_message


def check_close_reason(reason: str) -> int:
    """The reason's index in REASONS (its C enum value minus one)."""
    if reason not in CLOSE_REASONS:
        raise ValueError(f"a relay is closed as one of {CLOSE_REASONS}, not {reason!r}")
    return REASONS.index(reason) + 1


def check_inspect(inspect: str | None, on_held: object, framed_b: object) -> int:
    """The protocol id of an inspected relay (0: none)."""
    if inspect is None:
        return 0
    if inspect not in INSPECT_PROTOCOLS:
        raise ValueError(f"no inspection for protocol {inspect!r}")
    if on_held is None:
        raise ValueError("an inspected relay needs on_held")
    if framed_b is not None:
        raise ValueError("inspection needs side b unframed")
    return INSPECT_PROTOCOLS[inspect]


# csrc/mwi_relay.h MWI_AUDIT_*
AUDIT_PROTOCOLS = {"postgres": 1, "mysql": 2, "redis": 3, "mongodb": 4}
# audited and inspected at once (the tap reads side A before the inspector)
AUDIT_WITH_INSPECT = {"mysql": "mysql", "redis": "resp", "mongodb": "mongodb"}


def check_audit(audit: str | None, on_audit: object, inspect: str | None) -> int:
    """The protocol id of an audited relay (0: none)."""
    if audit is None:
        return 0
    if audit not in AUDIT_PROTOCOLS:
        raise ValueError(f"no query audit for protocol {audit!r}")
    if on_audit is None:
        raise ValueError("an audited relay needs on_audit")
    if inspect is not None and AUDIT_WITH_INSPECT.get(audit) != inspect:
        raise ValueError(f"a {audit} relay is audited or inspected, not both")
    return AUDIT_PROTOCOLS[audit]


class Framing(NamedTuple):
    """A relay side that speaks the `-ping` framing (see csrc/mwi_relay.h,
    mwi_relay_set_framed): reads deframed, writes framed, keepalives when idle.

    `header` (0-3 bytes of a frame header) or `payload_left` (bytes of the current frame
    still to come) is where the setup phase's deframer stopped, so the relay goes on from
    exactly there."""

    keepalive: float | None = None  # seconds without a write before an empty frame
    header: bytes = b""
    payload_left: int = 0

    def check(self, in_tls: bool = False) -> None:
        """`in_tls`: for a relay side whose TLS carries its records in the framing
        (TLSStream.wrap_inner(framing=...)): the reading state is in there, the relay only
        times the keepalives."""
        if in_tls and (self.header or self.payload_left):
            raise ValueError("a TLS stream framed inside keeps its own reading state")
        if len(self.header) > 3 or (self.header and self.payload_left):
            raise ValueError("a framing state is a partial header or a payload count")
        if not 0 <= self.payload_left <= 0xFFFFFFFF:
            raise ValueError("payload_left must fit in 32 bits")


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
    handshake_failed: int  # TLS failures and peers that left before handover
    handshake_timeouts: int  # ...and those that outlasted the handshake timeout
    accept_errors: int  # accept() failures (EMFILE, ...): accepting pauses briefly
    handshaking: int  # connections being peeked or handshaken now
    refused: int = 0  # routing: hellos and handshakes refused (handed as "refused")
    capped: int = 0  # closed at accept, over an admission cap
    pending: int = 0  # counted against the caps now (incl. "raw" ones not released)
    capped_source: int = 0  # ...of `capped`: over the per-source cap


# What a routing Acceptor hands over (Accepted.outcome)
ACC_TLS = "tls"  # a ClientHello offering a routed ALPN name: handshaken
ACC_RAW = "raw"  # anything else: the fd, unread
ACC_REFUSED = "refused"  # closed; `reason` says why (audited by the owner)
UNIX_SOURCE = "local"  # the source of a Unix socket's peers (they have no address)
ACC_CAPPED = "capped"  # closed at accept over a cap: the first since arm_notice()

# how both TLS builds word a client that closed mid-handshake: a hang-up, not a refusal
PEER_HUNG_UP = "the peer closed the connection"


class Accepted(NamedTuple):
    """One connection from a routing Acceptor."""

    outcome: str  # ACC_*
    conn: Any  # TLSStream ("tls"), the fd ("raw"), None otherwise
    peer: str  # "203.0.113.7:51234" (IPv6 without brackets)
    source: str  # the peer's IP: what the per-source cap counts
    kind: str = "need_more"  # the first bytes' kind (firstbytes.KIND_*)
    alpn: tuple[str, ...] = ()  # names the ClientHello offered
    reason: str = ""  # "refused": why, in OpenSSL's or the port's words
    # time.monotonic() when it was accepted and when handed over (after its handshake):
    # taken by the acceptor itself, so the handshake's time is measured where it runs
    accepted_at: float = 0.0
    ready_at: float = 0.0


def alpn_names(wire: bytes) -> tuple[str, ...]:
    """Wire-format ALPN names (length-prefixed) as text (latin-1, like the classifier)."""
    out, i = [], 0
    while i < len(wire):
        n = wire[i]
        out.append(wire[i + 1:i + 1 + n].decode("latin-1"))
        i += 1 + n
    return tuple(out)


def check_limits(limits: tuple[int, int] | None) -> tuple[int, int] | None:
    """(total, per_source) admission caps, validated."""
    if limits is None:
        return None
    total, per_source = limits
    if not 0 < per_source <= total:
        raise ValueError("need 0 < per_source <= total")
    return int(total), int(per_source)


def verdict_bytes(data: bytes | bytearray | memoryview, may_be_empty: bool = False) -> bytes:
    """A held message's verdict with bytes: a replacement (never empty) or an answer
    (empty: the message is only dropped)."""
    b = bytes(memoryview(data))
    if not b and not may_be_empty:
        raise ValueError("a held message's replacement needs bytes")
    return b
