"""Names shared by both TLS builds: verification modes, the error type, ALPN encoding."""

from __future__ import annotations

from collections.abc import Iterable

VERIFY_NONE = "none"  # no checks on the peer's certificate at all
VERIFY_OPTIONAL = "optional"  # server: ask for a client certificate, verify it if given
VERIFY_REQUIRED = "required"  # the peer must present a certificate the given CA signed

# the values match enum mwi_tls_verify in csrc/mwi_tls.h
VERIFY_MODES = {VERIFY_NONE: 0, VERIFY_OPTIONAL: 1, VERIFY_REQUIRED: 2}


class TLSError(ConnectionError):
    """A TLS handshake or record failure, in OpenSSL's words.

    Certificate problems read "certificate verify failed: <why>" (e.g. "certificate has
    expired", "unable to get local issuer certificate"); other failures carry OpenSSL's
    reason ("peer did not return a certificate", "tlsv1 alert unknown ca",
    "unsupported protocol", ...), identical in both builds.
    """


def verify_mode(verify: str) -> int:
    try:
        return VERIFY_MODES[verify]
    except KeyError:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")\
            from None


def alpn_wire(protocols: Iterable[str] | None) -> bytes:
    """ALPN names in wire format (each prefixed by its length), validated."""
    out = bytearray()
    for name in protocols or ():
        raw = name.encode("ascii")
        if not 0 < len(raw) < 256:
            raise ValueError(f"ALPN name must be 1-255 bytes: {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out)


def check_pems(server_side: bool, cert_pem: bytes | None, key_pem: bytes | None,
               ca_pem: bytes | None, verify: str) -> None:
    """The argument rules both builds enforce before touching OpenSSL."""
    verify_mode(verify)
    if server_side and not (cert_pem and key_pem):
        raise ValueError("a server context needs a certificate and a key")
    if bool(cert_pem) != bool(key_pem):
        raise ValueError("a certificate needs its key (and a key its certificate)")
    if verify != VERIFY_NONE and not ca_pem:
        raise ValueError("verifying peers needs a CA bundle")
