"""The bot's calls to the cluster: join, renew, and database certificates.

Every call is blocking (the renewer runs it in a worker thread) and opens its own
connection: calls are minutes apart, and a fresh connection never carries a stale
certificate from before a renewal.

With several cluster addresses (`proxy_server: a:3080,b:3080`, processes sharing one
storage) every call tries them in failover order (wire/failover.py): one that cannot be
reached, or that loses the answer, hands the call to the next, which answers a repeated
renewal with an equivalent certificate (the generation lives in the shared storage).

Trust on the first join comes from `onboarding` (teleport-facts.md §1): `ca_pins`
(the host CA must match a pin), `ca_path` (a PEM file of the host CA), or `insecure`
(trust whatever answers, loudly). After the join the bot verifies the cluster against
the host CA it stored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from mwiproxy.auth.client import (
    AuthClient,
    ClusterUnreachable,
    fetch_cas_pinned,
    first_answering,
)
from mwiproxy.auth.errors import AccessDenied, AuthError
from mwiproxy.bot.credentials import Credentials, generate_key, public_key_pem
from mwiproxy.bot.state import BotIdentity, StorageUnavailable, token_hash
from mwiproxy.config.bot import BotConfig
from mwiproxy.config.durations import format_duration
from mwiproxy.identity.pem import certificates
from mwiproxy.wire.addr import split_address_list
from mwiproxy.wire.failover import FailoverOrder
from mwiproxy.wire.frames import FrameError

log = logging.getLogger("mwiproxy.bot")

CALL_TIMEOUT = 15.0

T = TypeVar("T")


class OnboardingError(Exception):
    """The bot cannot establish trust in the cluster or join it; says what to change."""


def cluster_addr(config: BotConfig) -> str:
    return config.proxy_server or config.auth_server


def credentials_from(key_pem: bytes, reply: dict[str, Any]) -> Credentials:
    """Credentials from a join/renew/issue reply: {"cert": PEM, "cas": {kind: PEM}}."""
    cas = reply["cas"]
    return Credentials(
        key_pem=key_pem,
        cert_pem=reply["cert"].encode(),
        host_ca_pems=tuple(certificates(cas["host"].encode())),
        user_ca_pems=tuple(certificates(cas["user"].encode())),
        db_ca_pems=tuple(certificates(cas["db"].encode())),
    )


class ClusterClient:
    def __init__(self, addr: str, timeout: float | None = None) -> None:
        self.addr = addr  # as configured: one address or a list
        self.failover = FailoverOrder(split_address_list(addr))
        self.timeout = CALL_TIMEOUT if timeout is None else timeout

    def _each(self, call: Callable[[str], T]) -> T:
        """`call(address)` on the cluster addresses in failover order until one answers."""
        return first_answering(self.failover, call, log)

    def join(self, config: BotConfig, ttl: timedelta, key_pem: bytes) -> BotIdentity:
        """Join with the onboarding token after checking the cluster, for `key_pem`.

        The token works once; a retry whose first reply was lost must bring the same key
        (the cluster then answers with an equivalent certificate).
        """
        token = config.onboarding.resolve_token()
        if not token:
            raise OnboardingError("no onboarding token: set onboarding.token (or --token)")

        def join_at(address: str) -> Any:
            host_ca = self._trusted_host_ca(config, address)
            with AuthClient(address, ca_pems=host_ca, timeout=self.timeout) as client:
                return client.call("join", token=token,
                                   public_key=public_key_pem(key_pem).decode(),
                                   ttl=format_duration(ttl))
        reply = self._each(join_at)
        return _issued(BotIdentity(credentials_from(key_pem, reply), token_hash(token)))

    def renew(self, ident: BotIdentity, ttl: timedelta, key_pem: bytes) -> BotIdentity:
        """The next bot certificate (generation + 1) for `key_pem`.

        Asked again with the same identity and key after a lost reply, the cluster returns
        an equivalent certificate; a different key from an old generation locks the bot.
        """
        def renew_at(address: str) -> Any:
            with self._as_bot(ident, address) as client, _lost_answers_are_transient(address):
                return client.call("renew", public_key=public_key_pem(key_pem).decode(),
                                   ttl=format_duration(ttl))
        reply = self._each(renew_at)
        return _issued(BotIdentity(credentials_from(key_pem, reply), ident.token_sha256))

    def issue_database(
        self, ident: BotIdentity, *, service: str, database: str, username: str,
        ttl: timedelta,
    ) -> Credentials:
        key, public = generate_key()

        def issue_at(address: str) -> Any:
            with self._as_bot(ident, address) as client:
                return client.call("issue_database_cert", public_key=public.decode(),
                                   service=service, database=database, username=username,
                                   ttl=format_duration(ttl))
        return credentials_from(key, self._each(issue_at))

    def _as_bot(self, ident: BotIdentity, address: str) -> AuthClient:
        c = ident.creds
        return AuthClient(address, ca_pems=b"".join(c.host_ca_pems), cert_pem=c.cert_pem,
                          key_pem=c.key_pem, timeout=self.timeout)

    def _trusted_host_ca(self, config: BotConfig, address: str) -> bytes:
        onboarding = config.onboarding
        if onboarding.ca_pins:
            cas = fetch_cas_pinned(address, onboarding.ca_pins, timeout=self.timeout)
            return str(cas["host"]).encode()
        if onboarding.ca_path:
            return _read_ca_file(onboarding.ca_path)
        if config.insecure:
            log.warning(
                "INSECURE: joining %s without verifying the cluster (insecure: true); anyone "
                "on the network path could impersonate it. Use onboarding.ca_pins "
                "(`mwictl status` prints the pin).", address)
            with AuthClient(address, ca_pems=None, timeout=self.timeout) as unverified:
                return str(unverified.call("get_cas")["host"]).encode()
        raise OnboardingError(
            "cannot verify the cluster on first join: set onboarding.ca_pins (the CA pin "
            "printed by `mwictl status`), onboarding.ca_path, or insecure: true")


@contextlib.contextmanager
def _lost_answers_are_transient(addr: str) -> Iterator[None]:
    """AuthClient reads a first answer that never came as a refused certificate (how TLS
    1.3 shows one). A refusal comes as a TLS alert; a timeout, a reset or a cut-off frame
    is a lossy path instead: the renewal may have been committed, and asking again with
    the same key is what gets its certificate back, so it is retried like any outage."""
    try:
        yield
    except AccessDenied as e:
        lost = e.__context__
        if isinstance(lost, TimeoutError | ConnectionError | FrameError):
            raise ClusterUnreachable(
                f"lost the answer from the cluster at {addr} ({lost or type(lost).__name__})"
            ) from None
        raise


def _issued(ident: BotIdentity) -> BotIdentity:
    """Refuse a certificate that is not for our key (it would fail every later handshake)."""
    if not ident.creds.key_matches_certificate():
        raise AuthError("the cluster returned a bot certificate for another key")
    return ident


def _read_ca_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OnboardingError(f"onboarding.ca_path: cannot read {path}: {e.strerror}") from None
    pems = certificates(data)
    if not pems:
        raise OnboardingError(f"onboarding.ca_path: {path} holds no PEM certificate")
    return b"".join(pems)


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying soon (the cluster may come back); others need a person."""
    return isinstance(error, ClusterUnreachable | OSError | StorageUnavailable) or (
        isinstance(error, AuthError) and error.code in ("error", "internal"))
