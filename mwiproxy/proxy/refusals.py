"""Refusals at the cluster port's outer TLS, audited without letting a flood fill the log.

Every refused handshake (a certificate from the wrong CA, an expired one, a broken
ClientHello) and every verified certificate that carries no identity is a `tls.refused`
audit event. Anyone can open connections to the port, so the events are rate limited: a
token bucket per remote IP and one for the whole port. What the buckets turn away is
counted and written as one summary event (`suppressed: N`) per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from mwiproxy.auth.audit import TLS_REFUSED
from mwiproxy.wire.alpn import AUTH, DATABASE_PROTOCOLS, PING_SUFFIX

log = logging.getLogger("mwiproxy.proxy")

# per remote IP: a burst of a client's retries is recorded, a flood is not
PER_REMOTE_RATE = 1.0  # events/s
PER_REMOTE_BURST = 20
# the whole port: many remotes together cannot fill the disk either
TOTAL_RATE = 5.0
TOTAL_BURST = 100
SUMMARY_INTERVAL = 10.0  # s
MAX_REMOTES = 4096  # buckets kept; the oldest is forgotten first
TOP_REMOTES = 10  # remotes named in a summary

Emit = Callable[..., object]


@dataclass(frozen=True)
class TLSRefusal:
    """One refused connection. `cert`: the peer certificate (DER) when the TLS layer has
    one; a failed verification leaves none in either TLS build."""

    remote: str
    reason: str
    alpn_offered: tuple[str, ...] = ()
    alpn_selected: str = ""
    cert: bytes | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"remote": self.remote, "reason": self.reason,
                               "alpn_offered": list(self.alpn_offered),
                               "alpn_selected": self.alpn_selected}
        if self.cert:
            out.update(_cert_fields(self.cert))
        return out


def _cert_fields(der: bytes) -> dict[str, str]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    return {"cert_subject": cert.subject.rfc4514_string(),
            "cert_serial": format(cert.serial_number, "x"),
            "cert_issuer": cert.issuer.rfc4514_string()}


# a refusal's words (OpenSSL's or the port's) → mwiproxy_refusals_total{reason}
_REASON_WORDS = (("certificate has expired", "expired"),
                 ("certificate is not yet valid", "not_yet_valid"),
                 ("clienthello", "bad_client_hello"), ("first tls record", "bad_client_hello"),
                 ("no protocol this port serves", "other"),
                 ("carries no identity", "access_denied"))


def metric_reason(reason: str) -> str:
    """The bounded metric reason of a refused TLS connection (`tls_handshake` unless
    the words say better)."""
    words = reason.lower()
    return next((r for w, r in _REASON_WORDS if w in words), "tls_handshake")


def alpn_protocol(selected: str | None, offered: tuple[str, ...] = ()) -> str:
    """The protocol label of a connection from its ALPN: the database protocol without
    `teleport-` and `-ping`, "auth" for the auth API, "unknown" otherwise."""
    for name in ([selected] if selected else []) + list(offered):
        if name == AUTH:
            return "auth"
        base = name.removesuffix(PING_SUFFIX).removeprefix("teleport-")
        if base in DATABASE_PROTOCOLS and base != "cockroachdb":
            return base
    return "unknown"


def remote_ip(remote: str) -> str:
    """"203.0.113.7:51234" → "203.0.113.7" (IPv6 addresses come without brackets)."""
    return remote.rsplit(":", 1)[0]


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._stamp = float(burst), now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RefusalAudit:
    """Call with a TLSRefusal: audited via `emit(TLS_REFUSED, **fields)` while the
    buckets allow, counted otherwise."""

    def __init__(self, emit: Emit, *, clock: Callable[[], float] = time.monotonic,
                 per_remote: tuple[float, int] = (PER_REMOTE_RATE, PER_REMOTE_BURST),
                 total: tuple[float, int] = (TOTAL_RATE, TOTAL_BURST),
                 interval: float = SUMMARY_INTERVAL) -> None:
        self._emit, self._clock = emit, clock
        self._per_remote, self._interval = per_remote, interval
        self._total = TokenBucket(*total, clock())
        self._buckets: dict[str, TokenBucket] = {}
        self._suppressed: Counter[str] = Counter()
        self._last_summary = clock()
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, refusal: TLSRefusal) -> None:
        now = self._clock()
        if self._suppressed and now - self._last_summary >= self._interval:
            self.flush()  # the count so far comes before anything newer
        ip = remote_ip(refusal.remote)
        if self._allowed(ip, now):
            self._emit(TLS_REFUSED, **refusal.fields())
        else:
            self._count(ip)
            self._schedule_flush()

    def _allowed(self, ip: str, now: float) -> bool:
        bucket = self._buckets.pop(ip, None) or TokenBucket(*self._per_remote, now)
        self._buckets[ip] = bucket  # re-inserted: the dict's order is least recent first
        if len(self._buckets) > MAX_REMOTES:
            del self._buckets[next(iter(self._buckets))]
        # the port-wide bucket is only spent on what the remote's own bucket lets through
        return bucket.take(now) and self._total.take(now)

    def _count(self, ip: str) -> None:
        if ip in self._suppressed or len(self._suppressed) < MAX_REMOTES:
            self._suppressed[ip] += 1
        else:
            self._suppressed["other"] += 1

    def _schedule_flush(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): the next refusal or flush() reports
            return
        delay = max(0.0, self._interval - (self._clock() - self._last_summary))
        self._timer = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Write the summary of what was not recorded one by one (if anything was not)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_summary = self._clock()
        total = sum(self._suppressed.values())
        if not total:
            return
        top = dict(self._suppressed.most_common(TOP_REMOTES))
        self._suppressed.clear()
        log.warning("%d TLS refusals not audited one by one (rate limit)", total)
        self._emit(TLS_REFUSED, reason=f"rate limited: {total} more refusals not recorded "
                   "one by one", suppressed=total, remotes=top)
