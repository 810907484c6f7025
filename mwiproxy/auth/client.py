"""A small synchronous client of the auth API, used by mwictl and the bot.

It dials the cluster proxy's single port with TLS, offers the `mwi-auth` ALPN protocol,
verifies the proxy against the host CA, and presents a client certificate when it has
one. With several cluster processes on one storage (`a:3080,b:3080`), `first_answering`
walks their addresses in failover order (wire/failover.py) until one answers: the bot,
the database agent and mwictl all go through it. Before a bot has joined it has no CA to verify with: `fetch_cas_pinned` reads the
CAs over an unverified connection and accepts them only if the host CA matches a pin
(either host CA while it rotates).
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509

from mwiproxy.auth.errors import ERRORS_BY_CODE, AccessDenied, AuthError
from mwiproxy.identity.authorities import cert_pem, spki_pin
from mwiproxy.identity.identityfile import IdentityFile
from mwiproxy.identity.pem import certificates
from mwiproxy.identity.tlsctx import client_context
from mwiproxy.wire import alpn
from mwiproxy.wire.addr import DEFAULT_AUTH_PORT, HTTPS, LOOPBACK, TCP, parse_address
from mwiproxy.wire.failover import FailoverOrder
from mwiproxy.wire.frames import FrameError, encode, recv_frame

DEFAULT_TIMEOUT = 15.0

log = logging.getLogger("mwiproxy.auth.client")
T = TypeVar("T")


class ClusterUnreachable(AuthError):
    code = "unreachable"


class AuthClient:
    def __init__(
        self, addr: str, *, ca_pems: bytes | None, cert_pem: bytes | None = None,
        key_pem: bytes | None = None, server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        # what a user may type (--auth-server): host alone, :port, https://host
        cluster = parse_address(addr, schemes=(TCP, HTTPS), default_host=LOOPBACK,
                                default_port=DEFAULT_AUTH_PORT)
        self.host, self.port = cluster.host, cluster.port
        self.server_name = server_name or ("localhost" if self.host in ("127.0.0.1", "::1")
                                           else self.host)
        self._ctx = client_context(ca_pems, cert_pem, key_pem, alpn=[alpn.AUTH])
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._ids = itertools.count(1)
        self._has_cert = cert_pem is not None
        self._answered = False  # has this connection answered anything yet?

    @classmethod
    def from_identity(cls, addr: str, ident: IdentityFile, **kw: Any) -> AuthClient:
        return cls(addr, ca_pems=b"".join(ident.ca_pems), cert_pem=ident.cert_pem,
                   key_pem=ident.key_pem, **kw)

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is None:
            try:
                raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
            except OSError as e:
                raise ClusterUnreachable(
                    f"cannot reach the cluster at {self.host}:{self.port}: {e}") from None
            try:
                self._sock = self._ctx.wrap_socket(raw, server_hostname=self.server_name)
                self._answered = False
            except ssl.SSLCertVerificationError as e:
                raw.close()
                raise AuthError(f"the cluster's certificate is not trusted: {e.verify_message}"
                                ) from None
            except (ssl.SSLError, OSError) as e:
                raw.close()
                raise ClusterUnreachable(f"TLS handshake with the cluster failed: {e}") from None
            if self._sock.selected_alpn_protocol() != alpn.AUTH:
                self.close()
                raise ClusterUnreachable("the server at that address is not an mwiproxy cluster")
        return self._sock

    def connect(self) -> AuthClient:
        """Dial now (ClusterUnreachable if nothing answers there); `call` reuses it."""
        self._connect()
        return self

    def call(self, method: str, **params: Any) -> Any:
        sock = self._connect()
        msg_id = next(self._ids)
        try:
            sock.sendall(encode({"id": msg_id, "method": method, "params": params}))
            reply = recv_frame(sock)
            self._answered = True
        except (OSError, FrameError) as e:
            self.close()
            if self._has_cert and not self._answered:
                # TLS 1.3 checks the client certificate after the client thinks the
                # handshake is done, so a refusal shows up as the first reply missing.
                raise AccessDenied(
                    "the cluster closed the connection before answering: it refused this "
                    "identity's certificate (expired, or not issued by this cluster's user "
                    f"CA) [{e}]") from None
            raise ClusterUnreachable(f"lost the connection to the cluster: {e}") from None
        if "error" in reply:
            err = reply["error"] or {}
            cls = ERRORS_BY_CODE.get(err.get("code", ""), AuthError)
            raise cls(err.get("message", "unknown error"))
        return reply.get("result")

    def audit_events(self, limit: int = 1000, before: int | None = None,
                     **filters: Any) -> list[dict[str, Any]]:
        """The newest `limit` audit events matching `filters` (the `audit` method's
        since/types/session), oldest first, read page by page: one reply holds what
        fits in a frame, so each further call asks for the events `before` the oldest
        one received, until `limit` are read or a reply comes back empty."""
        got: list[list[dict[str, Any]]] = []
        left = limit
        while left > 0:
            cursor = {"before": before} if before is not None else {}
            page = list(self.call("audit", limit=left, **cursor, **filters))
            if not page:
                break
            got.append(page)
            left -= len(page)
            before = int(page[0]["id"])
        return [e for page in reversed(got) for e in page]

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_answering(failover: FailoverOrder, call: Callable[[str], T],
                    logger: logging.Logger = log) -> T:
    """`call(address)` on the cluster addresses in failover order until one answers; an
    unreachable process (or a lost answer) moves on to the next, any other error is
    final. The caller keeps `failover`, so the next call starts with the one that worked.
    """
    reasons: list[tuple[str, ClusterUnreachable]] = []
    for address in failover.order():
        try:
            result = call(address)
        except ClusterUnreachable as e:
            failover.failed(address)
            reasons.append((address, e))
            if len(failover) > 1:
                logger.warning("cluster at %s: %s; trying the next address", address, e)
            continue
        failover.worked(address)
        return result
    if len(reasons) == 1:
        raise reasons[0][1]
    raise ClusterUnreachable("no cluster address answered: "
                             + "; ".join(f"{a}: {e}" for a, e in reasons))


def fetch_cas_pinned(addr: str, pins: list[str], timeout: float = DEFAULT_TIMEOUT
                     ) -> dict[str, str]:
    """Read the cluster's CA certificates and check the host CA against a pin.

    During a host CA rotation the cluster names two host CAs; a pin of either is
    accepted, and only the pinned ones are trusted (an unverified answer could append
    any CA): the returned "host" holds just those. The join's answer, over the verified
    connection, then brings the whole bundle."""
    with AuthClient(addr, ca_pems=None, timeout=timeout) as unverified:
        cas = unverified.call("get_cas")
    hosts = [x509.load_pem_x509_certificate(pem) for pem in certificates(cas["host"].encode())]
    pinned = [h for h in hosts if spki_pin(h) in pins]
    if not pinned:
        seen = ", ".join(spki_pin(h) for h in hosts) or "none"
        raise AuthError(f"the cluster's host CA pin {seen} matches none of the configured "
                        "ca_pins: refusing to trust it")
    trusted = b"".join(cert_pem(h) for h in pinned)
    # Confirm the server we talked to really holds a certificate from a pinned CA.
    try:
        with AuthClient(addr, ca_pems=trusted, timeout=timeout) as verified:
            verified.call("ping")
    except (AuthError, OSError) as e:
        others = [spki_pin(h) for h in hosts if h not in pinned]
        if not others:
            raise
        raise AuthError(f"the cluster is rotating its host CA and serves a certificate from "
                        f"the CA pinned {', '.join(others)}, which is not among ca_pins: add "
                        f"that pin (`mwictl status` lists both) [{e}]") from None
    return {**cas, "host": trusted.decode()}
