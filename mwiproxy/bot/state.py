"""The bot's own identity, kept in `storage` so a restart reuses it instead of re-joining.

A join token works once, so losing this identity means asking the operator for a new
token. It is written with the same atomic directory writer as the outputs (one version
switch, files 0600), and holds the same files as an `identity` output plus a small
`mwibot-state.json` recording a hash of the token that joined: a *different* token in
the config means the operator wants a fresh join (e.g. after a lock).

The generation counter lives in the certificate itself; the newest certificate must be
on disk before it is used, or a restart would present a stale generation and lock the
bot. `save` therefore completes before the renewer switches to a new identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.destinations import DestinationError, DirectoryDestination, read_bundle
from mwiproxy.bot.outputs import DATABASE_CA, HOST_CA, KEY, TLS_CERT, USER_CA, render_common
from mwiproxy.config.bot import DirectoryDestinationConfig
from mwiproxy.identity.certs import Identity, identity_from_certificate
from mwiproxy.identity.pem import certificates

STATE_FILE = "mwibot-state.json"
_NAMES = [KEY, TLS_CERT, HOST_CA, USER_CA, DATABASE_CA, STATE_FILE]


class StateError(Exception):
    """The stored identity cannot be used; the message tells the operator what to do."""


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
        except (OSError, ValueError, KeyError, DestinationError) as e:
            raise StateError(
                f"the bot identity stored in {self.path} is unreadable ({e}); "
                "remove that directory and join again with a new token"
            ) from None
        if not ident.creds.key_matches_certificate():
            raise StateError(f"{self.path}: the stored key does not match the stored certificate")
        return ident

    def save(self, ident: BotIdentity) -> None:
        files = render_common(ident.creds)
        meta = {"bot": ident.bot_name, "generation": ident.generation,
                "token_sha256": ident.token_sha256}
        files[STATE_FILE] = json.dumps(meta, indent=2).encode() + b"\n"
        self._dest.write_bundle(files)
