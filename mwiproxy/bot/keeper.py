"""The bot's own identity: loaded from storage, joined once, renewed - one step at a time.

Every step is blocking and runs in a worker thread under one lock, so a renewal that
is still in flight when the daemon reloads its config (its awaiting task cancelled)
still stores its result and switches to it.

The cluster commits a renewal before its reply travels back, so a lost reply, or a new
identity the disk refuses, must never leave the bot asking again with a fresh key (that
is what a thief holding an old copy does, and the cluster locks it). Each join or
renewal therefore:
1. stores the next key first (`mwibot-next-key.json`, bot/state.py) - or reuses the one
   stored for this very certificate (or join token) by an attempt that got no answer;
2. asks the cluster with that key (a retry gets an equivalent certificate);
3. stores the new identity, and only then uses it and forgets the next key.
A storage failure at 1 or 3 is StorageUnavailable: the bot keeps the last identity it
stored, says why on /readyz and retries; it recovers by itself once the disk takes writes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from mwiproxy.auth.errors import Locked
from mwiproxy.bot.cluster import ClusterClient, OnboardingError, cluster_addr
from mwiproxy.bot.state import BotIdentity, BotStateStore, PendingKey
from mwiproxy.config.bot import BotConfig
from mwiproxy.config.loader import ConfigError

log = logging.getLogger("mwiproxy.bot")


class BotStopped(Exception):
    """Renewal cannot continue without the operator (locked, or identity expired)."""


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keeper_key(config: BotConfig) -> tuple[object, ...]:
    """What the identity depends on; a reload changing none of it keeps the keeper."""
    store = config.storage_directory
    return (store.path, store.symlinks, cluster_addr(config), config.insecure,
            repr(config.onboarding.to_yaml()))


class IdentityKeeper:
    def __init__(self, config: BotConfig, client: ClusterClient | None = None,
                 store: BotStateStore | None = None) -> None:
        self.config = config
        self.client = client or ClusterClient(cluster_addr(config))
        self.store = store or BotStateStore(config.storage_directory)
        self.current: BotIdentity | None = None
        self.renewed_at: float | None = None  # monotonic time of our last join/renewal
        self.pending: PendingKey | None = None  # stored next key, not yet certified+stored
        self._lock = threading.Lock()

    def ensure(self) -> BotIdentity:
        """The identity to use: in memory, else stored, else joined with the token."""
        with self._lock:
            if self.current is None:
                self.current = self._load_or_join()
            return self.current

    def renew(self) -> BotIdentity:
        """Renew the bot certificate with the stored next key; the new identity is
        stored before it is used (StorageUnavailable: the old one stays in use)."""
        with self._lock:
            old = self.current
            if old is None:
                raise RuntimeError("renew before ensure")
            if old.expired():
                raise BotStopped(self._expired_message(old))
            key = self._renewal_key(old)
            try:
                new = self.client.renew(old, self.config.credential_ttl, key.key_pem)
            except Locked as e:
                raise BotStopped(f"the cluster locked this bot: {e.message}") from None
            self._store(new)
            self.current, self.renewed_at = new, time.monotonic()
            return new

    def _load_or_join(self) -> BotIdentity:
        stored = self.store.load()
        token = self._token(usable=stored is not None and not stored.expired())
        if stored is not None and not stored.expired() and (
                not token or stored.joined_with(token)):
            log.info("using the bot identity stored in %s (bot %s, generation %d, expires %s)",
                     self.store.path, stored.bot_name, stored.generation,
                     stamp(stored.not_after))
            return stored
        if token and not (stored is not None and stored.joined_with(token)):
            return self._join(stored, token)
        if stored is not None:
            raise BotStopped(self._expired_message(stored))
        raise OnboardingError(
            f"no bot identity in {self.store.path} and no onboarding token to join with: "
            "set onboarding.token (mwictl bots add prints one)")

    def _token(self, usable: bool) -> str:
        """The join token; a missing token file is fine while a stored identity works."""
        try:
            return self.config.onboarding.resolve_token()
        except ConfigError:
            if usable:
                return ""
            raise

    def _join(self, stored: BotIdentity | None, token: str) -> BotIdentity:
        if stored is not None:
            log.info("onboarding.token changed: joining again (replacing the identity in %s)",
                     self.store.path)
        key = self._join_key(token)
        try:
            ident = self.client.join(self.config, self.config.credential_ttl, key.key_pem)
        except Locked as e:
            raise BotStopped(f"the cluster refused the join: {e.message}") from None
        self._store(ident)
        self.renewed_at = time.monotonic()
        log.info("joined the cluster at %s as bot %s (generation %d, expires %s)",
                 self.client.addr, ident.bot_name, ident.generation, stamp(ident.not_after))
        return ident

    # --- the next key (see the module docstring) ----------------------------------------

    def _renewal_key(self, ident: BotIdentity) -> PendingKey:
        kept = self._kept_pending()
        if kept is not None and kept.renews(ident):
            log.info("renewing generation %d again with the key stored in %s by the attempt "
                     "that got no answer", ident.generation, self.store.path)
            return kept
        return self._store_pending(PendingKey.for_renewal(ident))

    def _join_key(self, token: str) -> PendingKey:
        kept = self._kept_pending()
        if kept is not None and kept.joins_with(token):
            log.info("joining again with the key stored in %s by the attempt that got no "
                     "answer", self.store.path)
            return kept
        return self._store_pending(PendingKey.for_join(token))

    def _kept_pending(self) -> PendingKey | None:
        if self.pending is None:
            self.pending = self.store.load_pending()
        return self.pending

    def _store_pending(self, pending: PendingKey) -> PendingKey:
        self.store.save_pending(pending)  # StorageUnavailable: nothing is asked without it
        self.pending = pending
        return pending

    def _store(self, ident: BotIdentity) -> None:
        """Store a new identity; on StorageUnavailable the old one stays in use and the
        next key stays stored, so the retry gets an equivalent certificate."""
        self.store.save(ident)
        self.pending = None
        self.store.drop_pending()

    def _expired_message(self, ident: BotIdentity) -> str:
        return (f"the bot identity stored in {self.store.path} expired at "
                f"{stamp(ident.not_after)} and its join token was already used: a new join "
                f"token is needed (mwictl tokens add --bot-name={ident.bot_name}); put it in "
                "onboarding.token and start again")
