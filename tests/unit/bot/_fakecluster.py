"""A fake cluster for the bot's unit tests: signs real certificates like the auth service
and keeps its renewal contract (generation counter + the key each generation was issued
for: a retry from one generation behind with that same key gets an equivalent
certificate, any other old generation locks). Faults can be injected before the cluster
commits (`fail`) or after it (`lose_replies`: the answer never reaches the bot)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from mwiproxy.auth.client import ClusterUnreachable
from mwiproxy.auth.errors import Locked
from mwiproxy.bot.cluster import credentials_from
from mwiproxy.bot.credentials import Credentials, generate_key, public_key_pem
from mwiproxy.bot.keeper import IdentityKeeper
from mwiproxy.bot.state import BotIdentity, token_hash
from mwiproxy.config.bot import BotConfig, parse_bot_config
from mwiproxy.config.loader import load_yaml_documents
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import cert_pem, create_authority, load_public_key
from mwiproxy.identity.certs import DatabaseRoute, Identity


def fingerprint(key_pem: bytes) -> str:
    return hashlib.sha256(public_key_pem(key_pem)).hexdigest()


class FakeCluster:
    addr = "fake:3080"

    def __init__(self) -> None:
        self.user_ca = create_authority("user", "test.local")
        self.host_ca = create_authority("host", "test.local")
        self.db_ca = create_authority("db", "test.local")
        self.generation = 0
        self.key_fp = ""  # the key the current generation was issued for
        self.fail: Exception | None = None  # raised before anything is committed
        self.lose_replies = 0  # answers committed and then lost on the way back
        self.calls: list[str] = []
        self.keys: list[str] = []  # fingerprints asked for, in order
        self.mismatches = 0

    def _sign(self, ident: Identity, public: bytes, ttl: dt.timedelta) -> dict[str, Any]:
        cert = self.user_ca.sign_identity(ident, load_public_key(public), ttl)
        return {"cert": cert_pem(cert).decode(), "cas": {
            "host": self.host_ca.cert_pem.decode(), "user": self.user_ca.cert_pem.decode(),
            "db": self.db_ca.cert_pem.decode()}}

    def _bot(self, key: bytes, ttl: dt.timedelta, token: str) -> BotIdentity:
        ident = Identity(user="bot-x", roles=("bot-x",), usage=(oids.USAGE_BOT,), bot_name="x",
                         generation=self.generation, renewable=True)
        return BotIdentity(credentials_from(key, self._sign(ident, public_key_pem(key), ttl)),
                           token)

    def _call(self, name: str, key_pem: bytes | None = None) -> None:
        self.calls.append(name)
        if key_pem is not None:
            self.keys.append(fingerprint(key_pem))
        if self.fail is not None:
            raise self.fail

    def _answer(self, ident: BotIdentity) -> BotIdentity:
        if self.lose_replies:
            self.lose_replies -= 1
            raise ClusterUnreachable("lost the connection to the cluster: reset by peer")
        return ident

    def join(self, config: BotConfig, ttl: dt.timedelta, key_pem: bytes) -> BotIdentity:
        self._call("join", key_pem)
        fp = fingerprint(key_pem)
        if not (self.generation == 1 and fp == self.key_fp):  # else: a retry, same answer
            self.generation, self.key_fp = 1, fp
        return self._answer(self._bot(key_pem, ttl,
                                      token_hash(config.onboarding.resolve_token())))

    def renew(self, ident: BotIdentity, ttl: dt.timedelta, key_pem: bytes) -> BotIdentity:
        self._call("renew", key_pem)
        fp = fingerprint(key_pem)
        retry = ident.generation == self.generation - 1 and fp == self.key_fp
        if not retry:
            if ident.generation != self.generation:
                self.mismatches += 1
                raise Locked("renewal refused and bot locked: possibly a stolen certificate")
            self.generation, self.key_fp = self.generation + 1, fp
        return self._answer(self._bot(key_pem, ttl, ident.token_sha256))

    def issue_database(self, ident: BotIdentity, *, service: str, database: str,
                       username: str, ttl: dt.timedelta) -> Credentials:
        self._call("issue")
        key, public = generate_key()
        route = DatabaseRoute(service, "postgres", username, database)
        db = Identity(user="bot-x", usage=(oids.USAGE_DATABASE,), route=route, bot_name="x")
        return credentials_from(key, self._sign(db, public, ttl))


def make_config(tmp_path: Path, extra: str = "", token: str = "tok", **top: str) -> BotConfig:
    lines = [f"{k}: {v}" for k, v in {"credential_ttl": "20s", "renewal_interval": "1s",
                                        **top}.items()]
    text = "\n".join([
        "version: v2", "proxy_server: 127.0.0.1:3080", "insecure: true",
        "onboarding:", f"  token: {token}" if token else "  join_method: token",
        f"storage: {tmp_path / 'storage'}", *lines,
        "services:",
        "  - type: database", "    name: out", f"    destination: {tmp_path / 'out'}",
        "    service: pg", "    username: alice",
        "  - type: database-tunnel", "    name: tun", "    listen: 127.0.0.1:0",
        "    service: pg", "    database: app", "    username: alice",
        "  - type: identity", "    name: me", f"    destination: {tmp_path / 'me'}",
        extra,
    ])
    return parse_bot_config(load_yaml_documents(text, "t.yaml")[0], "t.yaml")


def keeper_for(config: BotConfig, cluster: FakeCluster) -> IdentityKeeper:
    return IdentityKeeper(config, client=cluster)  # type: ignore[arg-type]
