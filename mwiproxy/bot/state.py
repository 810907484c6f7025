"""The bot's own identity, kept in `storage` so a restart reuses it instead of re-joining.

A join token works once, so losing this identity means asking the operator for a new
token. It is written with the same atomic directory writer as the outputs (one version
switch, files 0600), and holds the same files as an `identity` output plus a small
`mwibot-state.json` recording a hash of the token that joined: a *different* token in
the config means the operator wants a fresh join (e.g. after a lock).

The generation counter lives in the certificate itself; the newest certificate must be
on disk before it is used, or a restart would present a stale generation and lock the
bot. `save` therefore completes before the renewer switches to a new identity.

The next key (`mwibot-next-key.json`, beside `.bundles/` at the top of the storage
directory, 0600, written to a temporary name, fsync'd, renamed, and the directory
fsync'd) is created and stored *before* a join or renewal is asked for, and removed only
after the certificate it got is stored. The cluster commits a renewal before its reply
travels back; when the reply is lost (or the new identity cannot be stored), the bot asks
again from its stored identity with this same key and the cluster answers with an
equivalent certificate instead of locking the bot as stolen. The file holds JSON:
`{"purpose": "renew", "renews_serial": HEX, "key": PEM}` (valid only while the stored
certificate has that serial) or `{"purpose": "join", "token_sha256": HEX, "key": PEM}`
(valid for a retry of that token's join).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mwiproxy.bot.credentials import Credentials, generate_key
from mwiproxy.bot.destinations import DestinationError, DirectoryDestination, write_new_file
from mwiproxy.bot.outputs import render_common
from mwiproxy.config.bot import DirectoryDestinationConfig
from mwiproxy.identity.bundle import (
    DATABASE_CA,
    HOST_CA,
    KEY,
    TLS_CERT,
    USER_CA,
    BundleError,
    read_bundle,
)
from mwiproxy.identity.certs import Identity, identity_from_certificate
from mwiproxy.identity.pem import certificates

STATE_FILE = "mwibot-state.json"
PENDING_FILE = "mwibot-next-key.json"
_NAMES = [KEY, TLS_CERT, HOST_CA, USER_CA, DATABASE_CA, STATE_FILE]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

log = logging.getLogger("mwiproxy.bot")


class StateError(Exception):
    """The stored identity cannot be used; the message tells the operator what to do."""


class StorageUnavailable(StateError):
    """`storage` refuses writes: the bot keeps its last stored identity and retries."""


def storage_failure(what: str, path: str, error: Exception) -> StorageUnavailable:
    """'cannot store the bot identity in /x (errno 28, No space left on device)'."""
    cause = error if isinstance(error, OSError) else error.__cause__
    if isinstance(cause, OSError) and cause.errno:
        detail = f"errno {cause.errno}, {cause.strerror or os.strerror(cause.errno)}"
    else:
        detail = str(error)
    return StorageUnavailable(f"cannot store {what} in {path} ({detail})")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class BotIdentity:
    """The bot's renewable certificate, its key, the cluster CAs, and how it joined."""

    creds: Credentials
    token_sha256: str = ""
    identity: Identity = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", identity_from_certificate(self.creds.certificate))

    @property
    def generation(self) -> int:
        return self.identity.generation

    @property
    def bot_name(self) -> str:
        return self.identity.bot_name

    @property
    def not_after(self) -> datetime:
        return self.creds.not_after

    def expired(self, now: datetime | None = None) -> bool:
        return self.not_after <= (now or datetime.now(UTC))

    def joined_with(self, token: str) -> bool:
        return bool(self.token_sha256) and self.token_sha256 == token_hash(token)

    @property
    def serial(self) -> str:
        return format(self.creds.certificate.serial_number, "x")


@dataclass(frozen=True)
class PendingKey:
    """The key of a join or renewal that was asked for but whose certificate is not stored."""

    key_pem: bytes
    purpose: str  # "join" or "renew"
    renews_serial: str = ""  # renew: the serial of the certificate being renewed
    token_sha256: str = ""  # join: the token it joins with

    @classmethod
    def for_renewal(cls, ident: BotIdentity) -> PendingKey:
        return cls(generate_key()[0], "renew", renews_serial=ident.serial)

    @classmethod
    def for_join(cls, token: str) -> PendingKey:
        return cls(generate_key()[0], "join", token_sha256=token_hash(token))

    def renews(self, ident: BotIdentity) -> bool:
        return self.purpose == "renew" and self.renews_serial == ident.serial

    def joins_with(self, token: str) -> bool:
        return self.purpose == "join" and self.token_sha256 == token_hash(token)

    def to_json(self) -> bytes:
        doc = {"purpose": self.purpose, "renews_serial": self.renews_serial,
               "token_sha256": self.token_sha256, "key": self.key_pem.decode()}
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> PendingKey:
        doc = json.loads(data)
        if doc.get("purpose") not in ("join", "renew") or "PRIVATE KEY" not in doc["key"]:
            raise ValueError("not a pending join or renewal key")
        return cls(doc["key"].encode(), doc["purpose"], str(doc.get("renews_serial", "")),
                   str(doc.get("token_sha256", "")))


class BotStateStore:
    """Reads and writes the bot identity in the `storage` directory."""

    def __init__(self, config: DirectoryDestinationConfig) -> None:
        self.path = config.path
        self._dest = DirectoryDestination(config.path, config.symlinks)

    def load(self) -> BotIdentity | None:
        """The stored identity, or None when the bot has never joined here."""
        if self._dest.current_version() is None:
            return None
        try:
            _, files = read_bundle(self._dest.path, _NAMES)
            meta = json.loads(files[STATE_FILE])
            creds = Credentials(
                key_pem=files[KEY], cert_pem=files[TLS_CERT],
                host_ca_pems=tuple(certificates(files[HOST_CA])),
                user_ca_pems=tuple(certificates(files[USER_CA])),
                db_ca_pems=tuple(certificates(files[DATABASE_CA])),
            )
            ident = BotIdentity(creds, str(meta.get("token_sha256", "")))
        except (OSError, ValueError, KeyError, BundleError) as e:
            raise StateError(
                f"the bot identity stored in {self.path} is unreadable ({e}); "
                "remove that directory and join again with a new token"
            ) from None
        if not ident.creds.key_matches_certificate():
            raise StateError(f"{self.path}: the stored key does not match the stored certificate")
        return ident

    def save(self, ident: BotIdentity) -> None:
        """Store the identity (one atomic bundle); StorageUnavailable says why it cannot."""
        files = render_common(ident.creds)
        meta = {"bot": ident.bot_name, "generation": ident.generation,
                "token_sha256": ident.token_sha256}
        files[STATE_FILE] = json.dumps(meta, indent=2).encode() + b"\n"
        try:
            self._dest.write_bundle(files)
        except (OSError, DestinationError) as e:
            raise storage_failure("the bot identity", self.path, e) from None

    # --- the pending key ----------------------------------------------------------------

    def load_pending(self) -> PendingKey | None:
        """The stored next key, or None (absent, or unreadable: then a new one is made)."""
        try:
            fd = os.open(os.path.join(self.path, PENDING_FILE),
                         os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                return PendingKey.from_json(f.read())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            log.warning("ignoring the unreadable %s in %s (%s): a new key will be made",
                        PENDING_FILE, self.path, e)
            return None

    def save_pending(self, pending: PendingKey) -> None:
        """Store the next key durably before it is used; StorageUnavailable when it cannot."""
        try:
            root = self._dest.open_root()
            try:
                _replace_file(root, PENDING_FILE, pending.to_json())
            finally:
                os.close(root)
        except (OSError, DestinationError) as e:
            raise storage_failure("the bot's next key", self.path, e) from None

    def drop_pending(self) -> None:
        """Forget the next key once its certificate is stored (a leftover is harmless:
        it names the serial it renews, so it is never used for another certificate)."""
        try:
            root = self._dest.open_root()
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(PENDING_FILE, dir_fd=root)
                os.fsync(root)
            finally:
                os.close(root)
        except (OSError, DestinationError) as e:
            log.warning("cannot remove %s from %s (%s); it will be ignored", PENDING_FILE,
                        self.path, e)


def _replace_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` (0600) so that a crash leaves the old content or the new, never a mix."""
    tmp = f".{name}.tmp-{secrets.token_hex(4)}"
    try:
        write_new_file(dir_fd, tmp, data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
