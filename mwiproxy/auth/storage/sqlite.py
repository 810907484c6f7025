"""SQLite storage: one file under the data dir, WAL mode, one connection per process."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from mwiproxy.auth.storage.base import (
    AgentHeartbeat,
    AuditEvent,
    AuditTail,
    BotRecord,
    ChainedAuditEvent,
    LockRecord,
    Storage,
    TokenRecord,
    TokenUnusable,
)
from mwiproxy.auth.storage.sqlite_audit import AUDIT_SCHEMA, SQLiteAudit, take_missing_guards

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bots (
    name TEXT PRIMARY KEY, roles TEXT NOT NULL, generation INTEGER NOT NULL,
    traits TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, kind TEXT NOT NULL, bot_name TEXT NOT NULL,
    expires REAL NOT NULL, created REAL NOT NULL, used_at REAL);
CREATE TABLE IF NOT EXISTS locks (
    lock_id TEXT PRIMARY KEY, target_kind TEXT NOT NULL, target TEXT NOT NULL,
    message TEXT NOT NULL, expires REAL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, addr TEXT NOT NULL,
    databases TEXT NOT NULL, expires REAL NOT NULL, last_heartbeat REAL NOT NULL,
    cert_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (key TEXT PRIMARY KEY, body TEXT NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (key TEXT PRIMARY KEY, user_name TEXT NOT NULL,
    body TEXT NOT NULL, expires REAL NOT NULL);
""" + AUDIT_SCHEMA


class SQLiteStorage(Storage):
    def __init__(self, path: str) -> None:
        new = not os.path.exists(path)
        if new:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        guards_missing = take_missing_guards(self._db)  # before SCHEMA re-creates them
        self._db.executescript(SCHEMA)
        self._migrate_bots()
        self._audit = SQLiteAudit(path, guards_missing)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # roles
    def put_role(self, name: str, role: dict[str, Any], *, overwrite: bool) -> bool:
        import time

        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        return self._x(f"{verb} INTO roles VALUES (?, ?, ?)",
                       (name, json.dumps(role), time.time())) == 1

    def get_role(self, name: str) -> dict[str, Any] | None:
        rows = self._q("SELECT body FROM roles WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def list_roles(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._q("SELECT body FROM roles ORDER BY name")]

    def delete_role(self, name: str) -> bool:
        return self._x("DELETE FROM roles WHERE name = ?", (name,)) == 1

    # bots
    _BOT_COLUMNS = "name, roles, generation, traits, created, last_seen, instance_id, issued"

    def _migrate_bots(self) -> None:
        """Data dirs from before lineage tracking: add the columns (empty until the
        bot's next join or renewal)."""
        have = {r[1] for r in self._q("PRAGMA table_info(bots)")}
        for column in ("instance_id", "issued"):
            if column not in have:
                default = "''" if column == "instance_id" else "'{}'"
                self._x(f"ALTER TABLE bots ADD COLUMN {column} TEXT NOT NULL "
                        f"DEFAULT {default}")

    @staticmethod
    def _bot(row: tuple[Any, ...]) -> BotRecord:
        return BotRecord(row[0], json.loads(row[1]), row[2], json.loads(row[3]), row[4], row[5],
                         row[6], json.loads(row[7]))

    def create_bot(self, bot: BotRecord) -> bool:
        return self._x(
            f"INSERT OR IGNORE INTO bots ({self._BOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (bot.name, json.dumps(bot.roles), bot.generation, json.dumps(bot.traits),
             bot.created, bot.last_seen, bot.instance_id, json.dumps(bot.issued)),
        ) == 1

    def get_bot(self, name: str) -> BotRecord | None:
        rows = self._q(f"SELECT {self._BOT_COLUMNS} FROM bots WHERE name = ?", (name,))
        return self._bot(rows[0]) if rows else None

    def list_bots(self) -> list[BotRecord]:
        return [self._bot(r) for r in self._q(f"SELECT {self._BOT_COLUMNS} FROM bots "
                                              "ORDER BY name")]

    def set_bot_roles(self, name: str, roles: list[str]) -> bool:
        return self._x("UPDATE bots SET roles = ? WHERE name = ?", (json.dumps(roles), name)) == 1

    def delete_bot(self, name: str) -> bool:
        with self._lock:
            self._db.execute("DELETE FROM tokens WHERE bot_name = ?", (name,))
            return self._db.execute("DELETE FROM bots WHERE name = ?", (name,)).rowcount == 1

    def bump_generation(self, name: str, expected: int, now: float,
                        issued: dict[str, Any]) -> bool:
        return self._x(
            "UPDATE bots SET generation = generation + 1, last_seen = ?, issued = ? "
            "WHERE name = ? AND generation = ?",
            (now, json.dumps(issued), name, expected),
        ) == 1

    def set_generation(self, name: str, generation: int, now: float, *,
                       instance_id: str, issued: dict[str, Any]) -> None:
        self._x("UPDATE bots SET generation = ?, last_seen = ?, instance_id = ?, issued = ? "
                "WHERE name = ?", (generation, now, instance_id, json.dumps(issued), name))

    # tokens
    @staticmethod
    def _token(row: tuple[Any, ...]) -> TokenRecord:
        return TokenRecord(*row)

    def create_token(self, token: TokenRecord) -> None:
        self._x("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                (token.token_id, token.kind, token.bot_name, token.expires, token.created,
                 token.used_at))

    def list_tokens(self) -> list[TokenRecord]:
        return [self._token(r) for r in self._q("SELECT * FROM tokens ORDER BY created")]

    def delete_token(self, token_id_prefix: str) -> int:
        if not token_id_prefix:
            return 0
        return self._x("DELETE FROM tokens WHERE substr(token_id, 1, ?) = ?",
                       (len(token_id_prefix), token_id_prefix))

    def consume_token(self, token_id: str, now: float) -> TokenRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT * FROM tokens WHERE token_id = ?", (token_id,)).fetchall()
                if not rows:
                    raise TokenUnusable("the token is not known to this cluster")
                tok = self._token(rows[0])
                if tok.used_at is not None:
                    raise TokenUnusable("the token was already used")
                if tok.expires <= now:
                    raise TokenUnusable("the token has expired")
                self._db.execute("UPDATE tokens SET used_at = ? WHERE token_id = ?",
                                 (now, token_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        tok.used_at = now
        return tok

    # locks
    def create_lock(self, lock: LockRecord) -> None:
        self._x("INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?)",
                (lock.lock_id, lock.target_kind, lock.target, lock.message, lock.expires,
                 lock.created))

    def list_locks(self, now: float | None = None) -> list[LockRecord]:
        if now is None:
            rows = self._q("SELECT * FROM locks ORDER BY created")
        else:
            rows = self._q("SELECT * FROM locks WHERE expires IS NULL OR expires > ? "
                           "ORDER BY created", (now,))
        return [LockRecord(*r) for r in rows]

    def delete_lock(self, lock_id: str) -> bool:
        return self._x("DELETE FROM locks WHERE lock_id = ?", (lock_id,)) == 1

    # audit (the chain: sqlite_audit.py)
    def append_audit_batch(self, events: Sequence[tuple[float, str, dict[str, Any]]]
                           ) -> list[int]:
        return self._audit.append_batch(events)

    def audit_chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]:
        return self._audit.chain()

    def audit_guards_missing(self) -> list[str]:
        return list(self._audit.guards_missing)

    def query_audit(
        self, *, since: float | None = None, types: list[str] | None = None,
        limit: int = 1000, session: str | None = None,
    ) -> list[AuditEvent]:
        sql = "SELECT id, time, type, fields FROM audit WHERE 1=1"
        args: list[Any] = []
        if session is not None:
            # by the index (sqlite_audit.py): with ORDER BY id DESC LIMIT and no
            # statistics, the planner would rather walk the whole log backwards
            sql = ("SELECT id, time, type, fields FROM audit INDEXED BY audit_session "
                   "WHERE session = ?")
            args.append(session)
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args.extend(types)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = self._q(sql, tuple(args))
        events = [AuditEvent(r[0], r[1], r[2], json.loads(r[3])) for r in reversed(rows)]
        if session is not None:  # the column is an unhashed index: the hashed field decides
            events = [e for e in events if e.fields.get("session") == session]
        return events

    def get_meta(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._x("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # agents and grants
    _AGENT_COLUMNS = "host_id, hostname, addr, databases, expires, last_heartbeat, cert_sha256"

    def put_agent(self, agent: AgentHeartbeat) -> None:
        self._x(f"INSERT OR REPLACE INTO agents ({self._AGENT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (agent.host_id, agent.hostname, agent.addr, json.dumps(agent.databases),
                 agent.expires, agent.last_heartbeat, agent.cert_sha256))

    def list_agents(self) -> list[AgentHeartbeat]:
        return [AgentHeartbeat(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])
                for r in self._q(f"SELECT {self._AGENT_COLUMNS} FROM agents ORDER BY host_id")]

    def delete_agent(self, host_id: str, *, expired_at: float | None = None) -> bool:
        if expired_at is None:
            return self._x("DELETE FROM agents WHERE host_id = ?", (host_id,)) == 1
        return self._x("DELETE FROM agents WHERE host_id = ? AND expires <= ?",
                       (host_id, expired_at)) == 1

    def put_grant(self, key: str, body: str, expires: float) -> None:
        self._x("INSERT INTO grants VALUES (?, ?, ?)", (key, body, expires))

    def take_grant(self, key: str) -> str | None:
        rows = self._q("DELETE FROM grants WHERE key = ? RETURNING body", (key,))
        return str(rows[0][0]) if rows else None

    def prune_grants(self, now: float) -> int:
        return self._x("DELETE FROM grants WHERE expires <= ?", (now,))

    # web users and tickets
    def put_user(self, name: str, body: dict[str, Any], *, overwrite: bool) -> bool:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        return self._x(f"{verb} INTO users VALUES (?, ?)", (name, json.dumps(body))) == 1

    def get_user(self, name: str) -> dict[str, Any] | None:
        rows = self._q("SELECT body FROM users WHERE name = ?", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_users(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r[0], json.loads(r[1])) for r in
                self._q("SELECT name, body FROM users ORDER BY name")]

    def delete_user(self, name: str) -> bool:
        with self._lock:
            self._x("DELETE FROM tickets WHERE user_name = ?", (name,))
            return self._x("DELETE FROM users WHERE name = ?", (name,)) == 1

    def put_ticket(self, key: str, user: str, body: dict[str, Any], expires: float) -> None:
        self._x("INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?)",
                (key, user, json.dumps(body), expires))

    def get_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        rows = self._q("SELECT user_name, body, expires FROM tickets WHERE key = ?", (key,))
        return (rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def take_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        rows = self._q("DELETE FROM tickets WHERE key = ? RETURNING user_name, body, expires",
                       (key,))
        return (rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def delete_tickets(self, user: str, *, expired_at: float | None = None) -> int:
        if user:
            return self._x("DELETE FROM tickets WHERE user_name = ?", (user,))
        return self._x("DELETE FROM tickets WHERE expires <= ?", (expired_at or 0.0,))

    def close(self) -> None:
        with self._lock:
            self._audit.close()
            self._db.close()
