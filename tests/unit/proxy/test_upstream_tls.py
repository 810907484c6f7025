"""An engine's database-client certificates (`engines/base.py` UpstreamTLS): the session
grant reaches the signer with the database's name, a cached certificate is reused (its
grant left unspent), a short agent certificate is cached for most of its life rather
than re-signed every second. (A cancel's context, with no certificate, meets the real
PostgreSQL in the e2e cancel tests.)"""

from __future__ import annotations

import asyncio
import datetime as dt

from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.engines.base import UpstreamTLS
from mwiproxy.identity.authorities import AuthoritySet

FIVE_MINUTES = dt.timedelta(minutes=5)


class _Signer:
    """Like the cluster does for an agent: at most five minutes, and say who asked."""

    def __init__(self, cas: AuthoritySet) -> None:
        self._cas = cas
        self.asked: list[tuple[str, str, str]] = []

    @property
    def db_ca_pem(self) -> bytes:
        return self._cas["db"].cert_pem

    @property
    def trust_epoch(self) -> int:
        return self._cas.epoch

    async def sign_db_client(self, db_user, public_key, ttl, *, service="", grant=""):
        self.asked.append((db_user, service, grant))
        return self._cas["db_client"].sign_database_user(db_user, public_key,
                                                         min(ttl, FIVE_MINUTES))


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def _tls(tmp_path) -> tuple[UpstreamTLS, _Signer, _Clock]:
    cas = AuthoritySet.load_or_create(tmp_path / "ca", "example.local")
    db = DatabaseConfig(name="agent-pg", protocol="postgres", uri="127.0.0.1:5432")
    signer, clock = _Signer(cas), _Clock()
    return UpstreamTLS(db, signer, clock=clock), signer, clock


def test_the_grant_reaches_the_signer_once_and_the_certificate_is_cached(tmp_path):
    tls, signer, clock = _tls(tmp_path)

    async def go() -> None:
        first = await tls.context_for("alice", "grant-1")
        clock.now += 3 * 60  # three minutes into a five-minute certificate: still cached
        assert await tls.context_for("alice", "grant-2") is first
        clock.now += 60 + 1  # past four minutes (a fifth of its life before expiry)
        assert await tls.context_for("alice", "grant-3") is not first

    asyncio.run(go())
    assert signer.asked == [("alice", "agent-pg", "grant-1"), ("alice", "agent-pg", "grant-3")]

