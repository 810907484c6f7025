"""Bots and their join tokens; joining and renewal with the generation counter.

A bot joins once with a one-time token and gets a renewable identity with generation 1
and a new lineage (instance id). Each renewal must present the generation the cluster
has on record, which is then bumped (compare-and-swap) together with the fingerprint of
the public key the new generation was issued for.

Renewal is idempotent so that a lost reply never locks a bot: the bot persists its next
key before asking, and when it asks again with the *previous* generation and the *same*
key (it never saw the answer), it gets an equivalent certificate of the current
generation. Anything else — an older generation, another lineage, or the previous
generation with a different key — means two holders of one identity (possibly a stolen
certificate): the bot is locked and the event audited (Teleport's rule). A join retried
with the same token and key, while the bot is still at generation 1 and the token has not
expired, likewise gets its certificate again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mwiproxy.auth import audit
from mwiproxy.auth.errors import (
    AccessDenied,
    AlreadyExists,
    BadRequest,
    Locked,
    NotFound,
    checked,
)
from mwiproxy.auth.locks import LockService, describe
from mwiproxy.auth.storage.base import BotRecord, Storage, TokenRecord, TokenUnusable
from mwiproxy.identity import names, oids
from mwiproxy.identity.authorities import AuthoritySet, PublicKey, cert_pem, key_fingerprint
from mwiproxy.identity.certs import Identity

DEFAULT_TOKEN_TTL = 3600.0
MAX_BOT_TTL = dt.timedelta(hours=24)  # the default; cluster.yaml auth.max_certificate_ttl


def token_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bot_user(name: str) -> str:
    return f"bot-{name}"


@dataclass(frozen=True)
class IssuedToken:
    secret: str
    record: TokenRecord


class BotService:
    def __init__(
        self, storage: Storage, cas: AuthoritySet, locks: LockService,
        audit_log: audit.AuditLog, cluster: str, clock: Callable[[], float] = time.time,
        max_ttl: Callable[[], dt.timedelta] = lambda: MAX_BOT_TTL,
    ) -> None:
        self._max_ttl = max_ttl
        self._storage = storage
        self._cas = cas
        self._locks = locks
        self._audit = audit_log
        self._cluster = cluster
        self._clock = clock

    # bots
    def add(self, name: str, roles: list[str], *, token_ttl: float | None = None,
            by: str = "") -> tuple[BotRecord, IssuedToken]:
        checked(names.bot_name, name)
        self._require_roles(roles)
        now = self._clock()
        bot = BotRecord(name=name, roles=sorted(set(roles)), generation=0, created=now)
        if not self._storage.create_bot(bot):
            raise AlreadyExists(f"bot {name!r} already exists")
        self._audit.emit(audit.BOT_CREATE, bot=name, roles=bot.roles, by=by)
        return bot, self.add_token(name, ttl=token_ttl, by=by)

    def update(self, name: str, *, add: Sequence[str] = (), remove: Sequence[str] = (),
               set_roles: list[str] | None = None, by: str = "") -> BotRecord:
        bot = self.get(name)
        self._require_roles(list(add) + list(set_roles or []))
        roles = set(bot.roles if set_roles is None else set_roles)
        roles |= set(add)
        missing = set(remove) - roles
        if missing:
            raise BadRequest(f"bot {name!r} does not have role(s) {', '.join(sorted(missing))}")
        roles -= set(remove)
        bot.roles = sorted(roles)
        self._storage.set_bot_roles(name, bot.roles)
        self._audit.emit(audit.BOT_UPDATE, bot=name, roles=bot.roles, by=by)
        return bot

    def get(self, name: str) -> BotRecord:
        bot = self._storage.get_bot(name)
        if bot is None:
            raise NotFound(f"bot {name!r} not found")
        return bot

    def list_bots(self) -> list[BotRecord]:
        return self._storage.list_bots()

    def remove(self, name: str, *, by: str = "") -> None:
        if not self._storage.delete_bot(name):
            raise NotFound(f"bot {name!r} not found")
        self._audit.emit(audit.BOT_DELETE, bot=name, by=by)

    def _require_roles(self, roles: list[str]) -> None:
        unknown = [r for r in roles if self._storage.get_role(r) is None]
        if unknown:
            raise NotFound(f"role(s) not found: {', '.join(unknown)}")

    # tokens
    def add_token(self, bot_name: str, *, ttl: float | None = None, by: str = "") -> IssuedToken:
        checked(names.bot_name, bot_name)
        self.get(bot_name)
        ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl
        if ttl <= 0:
            raise BadRequest("token TTL must be positive")
        secret = secrets.token_hex(16)
        now = self._clock()
        rec = TokenRecord(token_id(secret), "bot", bot_name, now + ttl, now)
        self._storage.create_token(rec)
        self._audit.emit(audit.TOKEN_CREATE, token_id=rec.token_id[:12], bot=bot_name,
                         expires=rec.expires, by=by)
        return IssuedToken(secret, rec)

    def list_tokens(self) -> list[TokenRecord]:
        return self._storage.list_tokens()

    def remove_token(self, token_or_id: str, *, by: str = "") -> None:
        key = token_or_id
        if len(key) == 32:  # the secret itself was given
            key = token_id(checked(names.join_token, token_or_id))
        else:
            checked(names.token_id, key)
        if self._storage.delete_token(key) == 0:
            raise NotFound("token not found")
        self._audit.emit(audit.TOKEN_DELETE, token_id=key[:12], by=by)

    # join and renew
    def join(self, secret: str, public_key: PublicKey, ttl: dt.timedelta,
             remote: str = "") -> tuple[Identity, bytes]:
        tid, fingerprint = token_id(secret), key_fingerprint(public_key)
        try:
            tok = self._storage.consume_token(tid, self._clock())
        except TokenUnusable as e:
            retried = self._join_retry(tid, fingerprint, public_key, ttl, remote)
            if retried is not None:
                return retried
            self._audit.emit(audit.BOT_JOIN_FAILED, reason=str(e), remote=remote)
            raise AccessDenied(f"join refused: {e}") from None
        if tok.kind != "bot":
            self._audit.emit(audit.BOT_JOIN_FAILED, reason=f"a {tok.kind!r} token",
                             remote=remote)
            raise AccessDenied("join refused: a bot needs a --type=bot token")
        bot = self._storage.get_bot(tok.bot_name)
        if bot is None:
            raise AccessDenied("join refused: the token's bot no longer exists")
        self._refuse_if_locked(bot, "join")
        # A fresh join starts a new lineage; an older copy that renews later will mismatch.
        instance = str(uuid.uuid4())
        ident, pem = self._sign_bot(bot, 1, instance, public_key, ttl)
        self._storage.set_generation(bot.name, 1, self._clock(), instance_id=instance,
                                     issued=_issued(1, fingerprint, token=tid))
        self._audit.emit(audit.BOT_JOIN, bot=bot.name, bot_instance_id=instance,
                         token_id=tid[:12], remote=remote, generation=1)
        return ident, pem

    def _join_retry(self, tid: str, fingerprint: str, public_key: PublicKey,
                    ttl: dt.timedelta, remote: str) -> tuple[Identity, bytes] | None:
        """The same join again (its reply was lost): the same token, the same key, the bot
        still at generation 1 and the token not expired. None when it is not that."""
        tok = next((t for t in self._storage.list_tokens() if t.token_id == tid), None)
        if tok is None or tok.kind != "bot" or tok.expires <= self._clock():
            return None
        bot = self._storage.get_bot(tok.bot_name)
        if bot is None or bot.generation != 1 or bot.issued != _issued(1, fingerprint, token=tid):
            return None
        self._refuse_if_locked(bot, "join")
        ident, pem = self._sign_bot(bot, 1, bot.instance_id, public_key, ttl)
        self._audit.emit(audit.BOT_JOIN, bot=bot.name, bot_instance_id=bot.instance_id,
                         token_id=tid[:12], remote=remote, generation=1, retry=True)
        return ident, pem

    def renew(self, caller: Identity, public_key: PublicKey, ttl: dt.timedelta,
              remote: str = "") -> tuple[Identity, bytes]:
        if not caller.is_bot or not caller.renewable or oids.USAGE_BOT not in caller.usage:
            raise AccessDenied("only a renewable bot identity can be renewed")
        bot = self._storage.get_bot(caller.bot_name)
        if bot is None:
            raise AccessDenied(f"bot {caller.bot_name!r} no longer exists")
        self._refuse_if_locked(bot, "renew")
        fingerprint = key_fingerprint(public_key)
        if bot.instance_id and caller.bot_instance_id != bot.instance_id:
            self._on_generation_mismatch(bot.name, caller, remote, "an earlier join")
        if caller.generation == bot.generation - 1 and (
                bot.issued.get("generation"), bot.issued.get("key_sha256")) == (
                bot.generation, fingerprint):
            # the reply to this very renewal was lost: the same certificate again
            ident, pem = self._sign_bot(bot, bot.generation, bot.instance_id, public_key, ttl)
            self._audit.emit(audit.BOT_RENEW, bot=bot.name, generation=bot.generation,
                             remote=remote, retry=True)
            return ident, pem
        new_gen = caller.generation + 1
        if caller.generation != bot.generation or not self._storage.bump_generation(
                bot.name, caller.generation, self._clock(), _issued(new_gen, fingerprint)):
            self._on_generation_mismatch(bot.name, caller, remote)
        ident, pem = self._sign_bot(bot, new_gen, caller.bot_instance_id, public_key, ttl)
        self._audit.emit(audit.BOT_RENEW, bot=bot.name, generation=new_gen, remote=remote)
        return ident, pem

    def _on_generation_mismatch(self, name: str, caller: Identity, remote: str,
                                lineage: str = "") -> NoReturn:
        stored = self.get(name).generation
        of = f" of {lineage}" if lineage else ""
        msg = (f"bot generation mismatch (presented {caller.generation}{of}, expected "
               f"{stored}): possibly a stolen certificate")
        self._audit.emit(audit.BOT_GENERATION_MISMATCH, bot=name, presented=caller.generation,
                         expected=stored, remote=remote,
                         bot_instance_id=caller.bot_instance_id)
        self._locks.create("bot", name, message=msg, by="mwiproxy")
        raise Locked(f"renewal refused and bot locked: {msg}")

    def _refuse_if_locked(self, bot: BotRecord, action: str) -> None:
        lock = self._locks.find(bot=bot.name, user=bot_user(bot.name), roles=bot.roles)
        if lock is not None:
            self._audit.emit(audit.BOT_RENEW_FAILED if action == "renew" else
                             audit.BOT_JOIN_FAILED, bot=bot.name, reason=describe(lock))
            raise Locked(f"{action} refused: {describe(lock)}")

    def _sign_bot(self, bot: BotRecord, generation: int, instance: str,
                  public_key: PublicKey, ttl: dt.timedelta) -> tuple[Identity, bytes]:
        ttl = min(ttl, self._max_ttl())  # read per call: SIGHUP may change the ceiling
        ident = Identity(
            user=bot_user(bot.name), roles=(bot_user(bot.name),), usage=(oids.USAGE_BOT,),
            bot_name=bot.name, bot_instance_id=instance, generation=generation,
            renewable=True, cluster=self._cluster,
        )
        cert = self._cas["user"].sign_identity(ident, public_key, ttl)
        self._audit.emit(audit.CERT_CREATE, user=ident.user, usage="bot", generation=generation,
                         serial=format(cert.serial_number, "x"),
                         expires=cert.not_valid_after_utc.timestamp())
        return ident, cert_pem(cert)


def stale_bot_identity(caller: Identity, bot: BotRecord | None, *, exact: bool) -> str:
    """Why a bot's certificate — its identity, or a database certificate issued to it —
    no longer speaks for the bot ("" when it does): the bot was removed, joined again
    since (another lineage), or (`exact`, for its identity) renewed since. A database
    certificate is bound to the lineage, not the generation: outputs renew on their own
    schedule (a database output may renew less often than the identity, or fail a while
    and keep its last good files), so the bot's generation moves on under certificates
    that are still in use; theft is judged at renewal, and a lock ends them at once."""
    if bot is None:
        return f"bot {caller.bot_name!r} no longer exists"
    if bot.instance_id and caller.bot_instance_id and caller.bot_instance_id != bot.instance_id:
        return (f"the certificate is from an earlier join of bot {bot.name!r}; "
                "the bot has joined again since")
    if caller.generation and (caller.generation > bot.generation or (
            exact and caller.generation != bot.generation)):
        return (f"the certificate is of generation {caller.generation} of bot "
                f"{bot.name!r}, but the bot is at generation {bot.generation}"
                + (" (it has renewed since)" if caller.generation < bot.generation else ""))
    return ""


def _issued(generation: int, fingerprint: str, *, token: str | None = None) -> dict[str, Any]:
    """What the cluster records about the certificate it issued last (see the module doc):
    a retry must match it exactly."""
    issued: dict[str, Any] = {"generation": generation, "key_sha256": fingerprint}
    if token:
        issued["token"] = token
    return issued
