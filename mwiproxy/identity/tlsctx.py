"""TLS contexts for the cluster's Python-side endpoints: TLS 1.2+, peers verified
against exactly the CA given, keys loaded from memory (never written to a temp file)."""

from __future__ import annotations

import os
import ssl


def _load_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl only loads key material from paths; an anonymous memory file keeps it off disk.
    cfd = os.memfd_create("mwi-cert", os.MFD_CLOEXEC)
    kfd = os.memfd_create("mwi-key", os.MFD_CLOEXEC)
    try:
        os.write(cfd, cert_pem)
        os.write(kfd, key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{cfd}", f"/proc/self/fd/{kfd}")
    finally:
        os.close(cfd)
        os.close(kfd)


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(
    cert_pem: bytes, key_pem: bytes, client_ca_pems: bytes | None = None,
    *, client_cert: str = "optional", alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """client_cert: "none" | "optional" (verified when offered) | "required"."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    # No session resumption: a resumed session skips certificate verification. These
    # are the control plane's endpoints (the auth API), spoken only by mwiproxy's own
    # clients, calls minutes apart: a full handshake costs nothing there. TLS 1.3 with no
    # tickets cannot resume at all; TLS 1.2 would resume by session id from OpenSSL's
    # server cache, which Python cannot turn off — so these endpoints take TLS 1.3 only.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    _load_chain_from_memory(ctx, cert_pem, key_pem)
    if client_cert != "none":
        if not client_ca_pems:
            raise ValueError("a client CA is needed to verify client certificates")
        ctx.load_verify_locations(cadata=client_ca_pems.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(
    ca_pems: bytes | None, cert_pem: bytes | None = None, key_pem: bytes | None = None,
    *, alpn: list[str] | None = None, check_hostname: bool = True,
) -> ssl.SSLContext:
    """ca_pems None means: do not verify the server (only for fetching CAs to pin-check)."""
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    if ca_pems is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pems.decode())
        ctx.check_hostname = check_hostname
    if cert_pem is not None and key_pem is not None:
        _load_chain_from_memory(ctx, cert_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
