"""Refusals at the cluster port's outer TLS, audited without letting a flood fill the log.

Every refused handshake (a certificate from the wrong CA, an expired one, a broken
ClientHello) and every verified certificate that carries no identity is a `tls.refused`
audit event. Anyone can open connections to the port, so the events are rate limited
(auth/audit_limit.py: a token bucket per remote IP and one for the whole port; what they
turn away is counted and written as one summary event, `suppressed: N`, per interval).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from mwiproxy.auth.audit import TLS_REFUSED
from mwiproxy.auth.audit_limit import Emit, LimitedAudit
from mwiproxy.wire.alpn import AUTH, DATABASE_PROTOCOLS, PING_SUFFIX

log = logging.getLogger("mwiproxy.proxy")



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


class RefusalAudit(LimitedAudit):
    """Call with a TLSRefusal: audited as `tls.refused` while the buckets allow."""

    def __init__(self, emit: Emit, **limits: Any) -> None:
        super().__init__(emit, TLS_REFUSED, "TLS refusals", **limits)

    def __call__(self, refusal: TLSRefusal) -> None:
        self.record(remote_ip(refusal.remote), refusal.fields())
