"""The storage interface of the control plane.

Every backend (SQLite now, PostgreSQL later) stores the same records and gives the same
guarantees: token use and bot generation bumps are atomic compare-and-swap operations,
and the audit log is append-only and hash-chained.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class BotRecord:
    name: str
    roles: list[str]
    generation: int = 0
    traits: dict[str, list[str]] = field(default_factory=dict)
    created: float = 0.0
    last_seen: float = 0.0
    instance_id: str = ""  # the lineage: set at each join, carried by every renewal
    # what the current generation was issued for: {"generation", "key_sha256",
    # "not_after"} — a renewal retried with the same key gets it again (see bots.py)
    issued: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenRecord:
    token_id: str  # sha256 of the secret, hex; the secret itself is never stored
    kind: str
    bot_name: str
    expires: float
    created: float
    used_at: float | None = None


@dataclass
class LockRecord:
    lock_id: str
    target_kind: str  # "bot" | "role" | "user"
    target: str
    message: str
    expires: float | None
    created: float


class EncodedFields:
    """An event's fields already in their stored form (`text`: what fields_text gives
    for them) with their `session` (what session_of gives): made by a producer that
    encodes a whole batch at once (the Redis query audit, natively), so neither is
    computed again on the writer's thread."""

    __slots__ = ("text", "session")

    def __init__(self, text: str, session: str | None) -> None:
        self.text = text
        self.session = session

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict again (for the process log)."""
        value = json.loads(self.text)
        return value if isinstance(value, dict) else {"fields": value}

    def __repr__(self) -> str:
        return f"EncodedFields({self.text!r})"


# an event's fields as given to the audit log: a dict, or already encoded
Fields = dict[str, Any] | EncodedFields



@dataclass
class AuditEvent:
    event_id: int
    time: float
    type: str
    fields: dict[str, Any]


@dataclass
class ChainedAuditEvent:
    """An audit event as stored, with its link in the hash chain (see chain.py); `text`
    is the fields exactly as stored, which is what the hash covers."""
    event_id: int
    time: float
    type: str
    text: str
    prev_hash: str | None
    hash: str | None


@dataclass
class AuditHead:
    event_id: int
    hash: str


@dataclass
class AuditTail:
    """What the store records about the end of the audit log apart from the rows."""
    head: AuditHead | None  # the newest event, written with it
    highest_id: int  # the highest event id the store has handed out


@dataclass
class AgentHeartbeat:
    """A database agent's registration as its last heartbeat left it (auth/agents.py),
    shared by every cluster process on the storage."""
    host_id: str
    hostname: str
    addr: str  # host:port the cluster proxies dial
    databases: list[dict[str, Any]]  # each as the heartbeat gave it, once admitted
    expires: float
    last_heartbeat: float
    cert_sha256: str  # the fingerprint of the identity certificate it heartbeat with


class TokenUnusable(Exception):
    """A join token is unknown, already used or expired."""


class StorageUnavailable(Exception):
    """The storage cannot be reached now (PostgreSQL: a lost connection that a retry did
    not cure, or a write cut off mid-way)."""


class StoreClosed(Exception):
    """The storage was closed: no later write can succeed (nothing to retry)."""


class LockNoticeSource(Protocol):
    """Tells a cluster process that another one may have created a lock."""

    def wait(self, timeout: float) -> bool: ...  # True: re-read the locks
    def close(self) -> None: ...  # from any thread: wait stops waiting
    def finish(self) -> None: ...  # from the waiting thread, after the last wait


class Storage(abc.ABC):
    # True when each call is a network round trip (PostgreSQL): callers on an event loop
    # then make their calls from a worker thread (proxy/access.check_policy_off_loop)
    remote = False

    # roles: stored as the role's dict form
    @abc.abstractmethod
    def put_role(self, name: str, role: dict[str, Any], *, overwrite: bool) -> bool:
        """Store a role; returns False when it exists and overwrite is False."""

    @abc.abstractmethod
    def get_role(self, name: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def list_roles(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def delete_role(self, name: str) -> bool: ...

    # bots
    @abc.abstractmethod
    def create_bot(self, bot: BotRecord) -> bool: ...

    @abc.abstractmethod
    def get_bot(self, name: str) -> BotRecord | None: ...

    @abc.abstractmethod
    def list_bots(self) -> list[BotRecord]: ...

    @abc.abstractmethod
    def set_bot_roles(self, name: str, roles: list[str]) -> bool: ...

    @abc.abstractmethod
    def delete_bot(self, name: str) -> bool: ...

    @abc.abstractmethod
    def bump_generation(self, name: str, expected: int, now: float,
                        issued: dict[str, Any]) -> bool:
        """Compare-and-swap: generation expected → expected + 1, recording `issued` in
        the same step. False on mismatch."""

    @abc.abstractmethod
    def set_generation(self, name: str, generation: int, now: float, *,
                       instance_id: str, issued: dict[str, Any]) -> None:
        """Start a new lineage (a fresh join)."""

    # join tokens
    @abc.abstractmethod
    def create_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def delete_token(self, token_id_prefix: str) -> int: ...

    @abc.abstractmethod
    def consume_token(self, token_id: str, now: float) -> TokenRecord:
        """Mark a token used, atomically; raises TokenUnusable saying why."""

    # locks
    @abc.abstractmethod
    def create_lock(self, lock: LockRecord) -> None: ...

    @abc.abstractmethod
    def list_locks(self, now: float | None = None) -> list[LockRecord]: ...

    @abc.abstractmethod
    def delete_lock(self, lock_id: str) -> bool: ...

    # audit (append-only, hash-chained: see chain.py)
    @abc.abstractmethod
    def append_audit_batch(self, events: Sequence[tuple[float, str, Fields]]
                           ) -> list[int]:
        """Store (time, type, fields) events in order, each linked to the one before and
        the first to the head, and move the head: all or none, in one transaction.
        Returns their ids."""

    @abc.abstractmethod
    def audit_chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]:
        """The recorded tail and every event in id order, read from one consistent
        snapshot (appends may go on meanwhile)."""

    @abc.abstractmethod
    def audit_guards_missing(self) -> list[str]:
        """The append-only guards (SQLite: triggers) that were missing when the store
        was opened; they have been put back since."""

    @abc.abstractmethod
    def query_audit(
        self, *, since: float | None = None, types: list[str] | None = None,
        limit: int = 1000, session: str | None = None, before: int | None = None,
    ) -> list[AuditEvent]:
        """The newest `limit` events (filtered), oldest first. `session`: only the
        events whose `session` field is that id (a database session's audit id, see
        proxy/sessions.py) — indexed, since a session is read while the log grows.
        `before`: only events with a smaller id (the cursor that pages back through a
        log larger than one reply)."""

    # small cluster facts (e.g. the cluster name a data dir was created for)
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # database agents' heartbeats and session grants (auth/agents.py, agent_grants.py):
    # shared, so any cluster process routes to any agent and honours any process's grant
    @abc.abstractmethod
    def put_agent(self, agent: AgentHeartbeat) -> None:
        """Insert or replace the agent's registration."""

    @abc.abstractmethod
    def list_agents(self) -> list[AgentHeartbeat]:
        """Every stored registration, expired ones too, ordered by host_id."""

    @abc.abstractmethod
    def delete_agent(self, host_id: str, *, expired_at: float | None = None) -> bool:
        """Remove a registration (with `expired_at`: only if it expired by then); True
        for the one caller that removed it."""

    @abc.abstractmethod
    def put_grant(self, key: str, body: str, expires: float) -> None: ...

    @abc.abstractmethod
    def take_grant(self, key: str) -> str | None:
        """The grant's body, removed in the same step: one taker gets it."""

    @abc.abstractmethod
    def prune_grants(self, now: float) -> int:
        """Remove the grants expired by `now`; how many."""

    # web users and their tickets (sessions, invites): bodies are JSON objects the
    # web layer owns (auth/users.py); a ticket's key is the SHA-256 of its secret
    @abc.abstractmethod
    def put_user(self, name: str, body: dict[str, Any], *, overwrite: bool) -> bool:
        """False if the user exists and overwrite is False."""

    @abc.abstractmethod
    def get_user(self, name: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def list_users(self) -> list[tuple[str, dict[str, Any]]]: ...

    @abc.abstractmethod
    def delete_user(self, name: str) -> bool:
        """Also deletes the user's tickets."""

    @abc.abstractmethod
    def put_ticket(self, key: str, user: str, body: dict[str, Any], expires: float) -> None:
        """Insert or replace."""

    @abc.abstractmethod
    def get_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None: ...

    @abc.abstractmethod
    def take_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        """Delete and return it: once, whoever asks (single-use invites)."""

    @abc.abstractmethod
    def delete_tickets(self, user: str, *, expired_at: float | None = None) -> int:
        """The user's tickets (every user's expired ones when user is "")."""

    def lock_notices(self) -> LockNoticeSource | None:
        """Where other processes' new locks are heard (None: this process is the only
        one using the storage, as with SQLite)."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...
