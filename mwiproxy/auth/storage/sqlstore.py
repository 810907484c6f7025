"""What the two SQL backends share: every statement's shape and every row's mapping.

`SQLStorage` builds each statement once, through a small `Dialect` (the placeholder,
how a column is matched against a list, the audit table's session index hint). A
backend (sqlite.py, postgres.py) opens its connection, creates its schema and gives the
four ways a statement runs: a read (`_q`, which PostgreSQL retries once after a lost
connection), a write's row count (`_x`), a write's returned rows (`_x_rows`), and
several writes in one transaction (`_x_each`). A backend overrides a method only where
its database does the step differently (PostgreSQL's lock insert also notifies).

A new table: its column tuple, a row mapper, and methods here built from `_insert`,
`_upsert` and `_select`; the DDL goes to each backend's schema.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mwiproxy.auth.storage.base import (
    AgentHeartbeat,
    AuditEvent,
    AuditTail,
    BotRecord,
    ChainedAuditEvent,
    Fields,
    LockRecord,
    Storage,
    TokenRecord,
    TokenUnusable,
)

Row = tuple[Any, ...]
Statement = tuple[str, Sequence[Any]]

BOT_COLUMNS = ("name", "roles", "generation", "traits", "created", "last_seen",
               "instance_id", "issued")
TOKEN_COLUMNS = ("token_id", "kind", "bot_name", "expires", "created", "used_at")
LOCK_COLUMNS = ("lock_id", "target_kind", "target", "message", "expires", "created")
AGENT_COLUMNS = ("host_id", "hostname", "addr", "databases", "expires", "last_heartbeat",
                 "cert_sha256")
ROLE_COLUMNS = ("name", "body", "updated")
META_COLUMNS = ("key", "value")
GRANT_COLUMNS = ("key", "body", "expires")
USER_COLUMNS = ("name", "body")
TICKET_COLUMNS = ("key", "user_name", "body", "expires")


@dataclass(frozen=True)
class Dialect:
    param: str  # the placeholder: "?" (sqlite3) or "%s" (psycopg)
    # " INDEXED BY ..." after `FROM audit` when filtering by session (SQLite: without
    # statistics the planner would rather walk the whole log backwards)
    audit_session_hint: str = ""
    # `column = ANY(%s)` with one list parameter (PostgreSQL) instead of `IN (?, ...)`
    any_array: bool = False

    def params(self, n: int) -> str:
        return ", ".join([self.param] * n)

    def one_of(self, column: str, values: Sequence[Any]) -> Statement:
        """A condition: `column` is one of `values` (not empty), and its arguments."""
        if self.any_array:
            return f"{column} = ANY({self.param})", [list(values)]
        return f"{column} IN ({self.params(len(values))})", list(values)


class AuditStore(Protocol):
    """The backend's audit table (sqlite_audit.py, pg_audit.py)."""
    guards_missing: list[str]

    def append_batch(self, events: Sequence[tuple[float, str, Fields]]
                     ) -> list[int]: ...
    def chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]: ...
    def close(self) -> None: ...


def bot_record(row: Row) -> BotRecord:
    return BotRecord(row[0], json.loads(row[1]), int(row[2]), json.loads(row[3]), row[4],
                     row[5], row[6], json.loads(row[7]))


def bot_values(bot: BotRecord) -> Row:
    return (bot.name, json.dumps(bot.roles), bot.generation, json.dumps(bot.traits),
            bot.created, bot.last_seen, bot.instance_id, json.dumps(bot.issued))


def token_record(row: Row) -> TokenRecord:
    return TokenRecord(*row)


def token_values(token: TokenRecord) -> Row:
    return (token.token_id, token.kind, token.bot_name, token.expires, token.created,
            token.used_at)


def lock_values(lock: LockRecord) -> Row:
    return (lock.lock_id, lock.target_kind, lock.target, lock.message, lock.expires,
            lock.created)


def agent_record(row: Row) -> AgentHeartbeat:
    return AgentHeartbeat(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])


def agent_values(agent: AgentHeartbeat) -> Row:
    return (agent.host_id, agent.hostname, agent.addr, json.dumps(agent.databases),
            agent.expires, agent.last_heartbeat, agent.cert_sha256)


class SQLStorage(Storage):
    dialect: Dialect
    _audit: AuditStore

    # how a statement runs: the backend's
    @abc.abstractmethod
    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read."""

    @abc.abstractmethod
    def _x(self, sql: str, args: Sequence[Any] = ()) -> int:
        """A write: its row count."""

    @abc.abstractmethod
    def _x_rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A write with RETURNING: the rows it returned (never retried)."""

    @abc.abstractmethod
    def _x_each(self, statements: Sequence[Statement]) -> list[int]:
        """Writes in one transaction: each one's row count."""

    # statement builders
    def _insert(self, table: str, columns: Sequence[str], *,
                ignore_existing: str | None = None) -> str:
        """INSERT of one row; `ignore_existing`: the key whose conflict inserts nothing."""
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
               f"VALUES ({self.dialect.params(len(columns))})")
        return sql + (f" ON CONFLICT ({ignore_existing}) DO NOTHING" if ignore_existing else "")

    def _upsert(self, table: str, columns: Sequence[str], key: str) -> str:
        """Insert or replace the row with that key (every other column is overwritten)."""
        update = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        return f"{self._insert(table, columns)} ON CONFLICT ({key}) DO UPDATE SET {update}"

    @staticmethod
    def _select(table: str, columns: Sequence[str], rest: str = "") -> str:
        return f"SELECT {', '.join(columns)} FROM {table}" + (f" {rest}" if rest else "")

    # roles
    def put_role(self, name: str, role: dict[str, Any], *, overwrite: bool) -> bool:
        sql = (self._upsert("roles", ROLE_COLUMNS, "name") if overwrite
               else self._insert("roles", ROLE_COLUMNS, ignore_existing="name"))
        return self._x(sql, (name, json.dumps(role), time.time())) == 1

    def get_role(self, name: str) -> dict[str, Any] | None:
        p = self.dialect.param
        rows = self._q(f"SELECT body FROM roles WHERE name = {p}", (name,))
        return json.loads(rows[0][0]) if rows else None

    def list_roles(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._q("SELECT body FROM roles ORDER BY name")]

    def delete_role(self, name: str) -> bool:
        return self._x(f"DELETE FROM roles WHERE name = {self.dialect.param}", (name,)) == 1

    # bots
    def create_bot(self, bot: BotRecord) -> bool:
        return self._x(self._insert("bots", BOT_COLUMNS, ignore_existing="name"),
                       bot_values(bot)) == 1

    def get_bot(self, name: str) -> BotRecord | None:
        p = self.dialect.param
        rows = self._q(self._select("bots", BOT_COLUMNS, f"WHERE name = {p}"), (name,))
        return bot_record(rows[0]) if rows else None

    def list_bots(self) -> list[BotRecord]:
        return [bot_record(r) for r in self._q(self._select("bots", BOT_COLUMNS,
                                                            "ORDER BY name"))]

    def set_bot_roles(self, name: str, roles: list[str]) -> bool:
        p = self.dialect.param
        return self._x(f"UPDATE bots SET roles = {p} WHERE name = {p}",
                       (json.dumps(roles), name)) == 1

    def delete_bot(self, name: str) -> bool:
        p = self.dialect.param
        counts = self._x_each([(f"DELETE FROM tokens WHERE bot_name = {p}", (name,)),
                               (f"DELETE FROM bots WHERE name = {p}", (name,))])
        return counts[-1] == 1

    def bump_generation(self, name: str, expected: int, now: float,
                        issued: dict[str, Any]) -> bool:
        p = self.dialect.param
        return self._x(
            f"UPDATE bots SET generation = generation + 1, last_seen = {p}, issued = {p} "
            f"WHERE name = {p} AND generation = {p}",
            (now, json.dumps(issued), name, expected),
        ) == 1

    def set_generation(self, name: str, generation: int, now: float, *,
                       instance_id: str, issued: dict[str, Any]) -> None:
        p = self.dialect.param
        self._x(f"UPDATE bots SET generation = {p}, last_seen = {p}, instance_id = {p}, "
                f"issued = {p} WHERE name = {p}",
                (generation, now, instance_id, json.dumps(issued), name))

    # tokens
    def create_token(self, token: TokenRecord) -> None:
        self._x(self._insert("tokens", TOKEN_COLUMNS), token_values(token))

    def list_tokens(self) -> list[TokenRecord]:
        return [token_record(r) for r in self._q(self._select("tokens", TOKEN_COLUMNS,
                                                              "ORDER BY created"))]

    def delete_token(self, token_id_prefix: str) -> int:
        if not token_id_prefix:
            return 0
        p = self.dialect.param
        return self._x(f"DELETE FROM tokens WHERE substr(token_id, 1, {p}) = {p}",
                       (len(token_id_prefix), token_id_prefix))

    def consume_token(self, token_id: str, now: float) -> TokenRecord:
        # one conditional statement: atomic across threads and processes
        p = self.dialect.param
        rows = self._x_rows(
            f"UPDATE tokens SET used_at = {p} WHERE token_id = {p} AND used_at IS NULL "
            f"AND expires > {p} RETURNING {', '.join(TOKEN_COLUMNS)}", (now, token_id, now))
        if rows:
            return token_record(rows[0])
        rows = self._q(self._select("tokens", TOKEN_COLUMNS, f"WHERE token_id = {p}"),
                       (token_id,))
        if not rows:
            raise TokenUnusable("the token is not known to this cluster")
        if token_record(rows[0]).used_at is not None:
            raise TokenUnusable("the token was already used")
        raise TokenUnusable("the token has expired")

    # locks
    def create_lock(self, lock: LockRecord) -> None:
        self._x(self._insert("locks", LOCK_COLUMNS), lock_values(lock))

    def list_locks(self, now: float | None = None) -> list[LockRecord]:
        if now is None:
            rows = self._q(self._select("locks", LOCK_COLUMNS, "ORDER BY created"))
        else:
            rows = self._q(self._select(
                "locks", LOCK_COLUMNS,
                f"WHERE expires IS NULL OR expires > {self.dialect.param} ORDER BY created"),
                (now,))
        return [LockRecord(*r) for r in rows]

    def delete_lock(self, lock_id: str) -> bool:
        return self._x(f"DELETE FROM locks WHERE lock_id = {self.dialect.param}",
                       (lock_id,)) == 1

    # audit (the chain: the backend's audit store)
    def append_audit_batch(self, events: Sequence[tuple[float, str, Fields]]
                           ) -> list[int]:
        return self._audit.append_batch(events)

    def audit_chain(self) -> tuple[AuditTail, Iterator[ChainedAuditEvent]]:
        return self._audit.chain()

    def audit_guards_missing(self) -> list[str]:
        return list(self._audit.guards_missing)

    def query_audit(
        self, *, since: float | None = None, types: list[str] | None = None,
        limit: int = 1000, session: str | None = None, before: int | None = None,
    ) -> list[AuditEvent]:
        p = self.dialect.param
        sql = "SELECT id, time, type, fields FROM audit"
        where: list[str] = []
        args: list[Any] = []
        if session is not None:  # by the audit_session index
            sql += self.dialect.audit_session_hint
            where.append(f"session = {p}")
            args.append(session)
        if since is not None:
            where.append(f"time >= {p}")
            args.append(since)
        if before is not None:
            where.append(f"id < {p}")
            args.append(before)
        if types:
            condition, values = self.dialect.one_of("type", types)
            where.append(condition)
            args.extend(values)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._q(sql + f" ORDER BY id DESC LIMIT {p}", (*args, limit))
        events = [AuditEvent(int(r[0]), r[1], r[2], json.loads(r[3])) for r in reversed(rows)]
        if session is not None:  # the column is an unhashed index: the hashed field decides
            events = [e for e in events if e.fields.get("session") == session]
        return events

    # meta
    def get_meta(self, key: str) -> str | None:
        rows = self._q(f"SELECT value FROM meta WHERE key = {self.dialect.param}", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._x(self._upsert("meta", META_COLUMNS, "key"), (key, value))

    # agents and grants
    def put_agent(self, agent: AgentHeartbeat) -> None:
        self._x(self._upsert("agents", AGENT_COLUMNS, "host_id"), agent_values(agent))

    def list_agents(self) -> list[AgentHeartbeat]:
        return [agent_record(r) for r in self._q(self._select("agents", AGENT_COLUMNS,
                                                              "ORDER BY host_id"))]

    def delete_agent(self, host_id: str, *, expired_at: float | None = None) -> bool:
        p = self.dialect.param
        if expired_at is None:
            return self._x(f"DELETE FROM agents WHERE host_id = {p}", (host_id,)) == 1
        return self._x(f"DELETE FROM agents WHERE host_id = {p} AND expires <= {p}",
                       (host_id, expired_at)) == 1

    def put_grant(self, key: str, body: str, expires: float) -> None:
        self._x(self._insert("grants", GRANT_COLUMNS), (key, body, expires))

    def take_grant(self, key: str) -> str | None:
        rows = self._x_rows(f"DELETE FROM grants WHERE key = {self.dialect.param} "
                            "RETURNING body", (key,))
        return str(rows[0][0]) if rows else None

    def prune_grants(self, now: float) -> int:
        return self._x(f"DELETE FROM grants WHERE expires <= {self.dialect.param}", (now,))

    # web users and their tickets (auth/users.py)
    def put_user(self, name: str, body: dict[str, Any], *, overwrite: bool) -> bool:
        sql = (self._upsert("users", USER_COLUMNS, "name") if overwrite
               else self._insert("users", USER_COLUMNS, ignore_existing="name"))
        return self._x(sql, (name, json.dumps(body))) == 1

    def get_user(self, name: str) -> dict[str, Any] | None:
        rows = self._q(f"SELECT body FROM users WHERE name = {self.dialect.param}", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_users(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r[0], json.loads(r[1])) for r in
                self._q(self._select("users", USER_COLUMNS, "ORDER BY name"))]

    def delete_user(self, name: str) -> bool:
        p = self.dialect.param
        counts = self._x_each([(f"DELETE FROM tickets WHERE user_name = {p}", (name,)),
                               (f"DELETE FROM users WHERE name = {p}", (name,))])
        return counts[-1] == 1

    def put_ticket(self, key: str, user: str, body: dict[str, Any], expires: float) -> None:
        self._x(self._upsert("tickets", TICKET_COLUMNS, "key"),
                (key, user, json.dumps(body), expires))

    def get_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        p = self.dialect.param
        rows = self._q(self._select("tickets", TICKET_COLUMNS[1:], f"WHERE key = {p}"), (key,))
        return (rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def take_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        rows = self._x_rows(f"DELETE FROM tickets WHERE key = {self.dialect.param} "
                            "RETURNING user_name, body, expires", (key,))
        return (rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def delete_tickets(self, user: str, *, expired_at: float | None = None) -> int:
        p = self.dialect.param
        if user:
            return self._x(f"DELETE FROM tickets WHERE user_name = {p}", (user,))
        return self._x(f"DELETE FROM tickets WHERE expires <= {p}", (expired_at or 0.0,))
