"""PostgreSQL storage: the same records and guarantees as SQLite, in a database several
processes can reach (`storage: {type: postgres, conn_string: ...}` in cluster.yaml).

The atomic steps are single conditional statements, so they hold across processes:
a generation bump is `UPDATE ... WHERE generation = expected`, a token is used by
`UPDATE ... WHERE used_at IS NULL AND expires > now`; the audit chain is in pg_audit.py,
the schema and its migrations in pg_schema.py, reconnection in pg_conn.py, the notices
that tell other cluster processes about a new lock in pg_locks.py.

Calls are synchronous, like SQLite's: the auth API runs them on its worker threads, the
proxy's access check at session start on a worker thread too (`remote`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

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
from mwiproxy.auth.storage.pg_audit import PostgresAudit
from mwiproxy.auth.storage.pg_conn import Connection
from mwiproxy.auth.storage.pg_locks import CHANNEL, LockNotices
from mwiproxy.auth.storage.pg_schema import migrate

Row = tuple[Any, ...]
_BOT_COLUMNS = "name, roles, generation, traits, created, last_seen, instance_id, issued"
_TOKEN_COLUMNS = "token_id, kind, bot_name, expires, created, used_at"
_LOCK_COLUMNS = "lock_id, target_kind, target, message, expires, created"
_AGENT_COLUMNS = "host_id, hostname, addr, databases, expires, last_heartbeat, cert_sha256"


def _bot(row: Row) -> BotRecord:
    return BotRecord(row[0], json.loads(row[1]), int(row[2]), json.loads(row[3]), row[4],
                     row[5], row[6], json.loads(row[7]))


def _token(row: Row) -> TokenRecord:
    return TokenRecord(*row)


class PostgresStorage(Storage):
    remote = True

    def __init__(self, conn_string: str) -> None:
        self._conn_string = conn_string
        self._conn = Connection(conn_string, "storage")
        try:
            guards_missing = self._conn.run(migrate, read=False)
            self._audit = PostgresAudit(conn_string, guards_missing)
        except BaseException:
            self._conn.close()
            raise

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read: retried once on a new connection if the connection was lost."""
        return self._conn.run(lambda c: c.execute(sql, args).fetchall(),  # type: ignore[arg-type]
                              read=True)

    def _x(self, sql: str, args: Sequence[Any] = ()) -> int:
        """A write: its row count."""
        return self._conn.run(lambda c: c.execute(sql, args).rowcount,  # type: ignore[arg-type]
                              read=False)

    # roles
    def put_role(self, name: str, role: dict[str, Any], *, overwrite: bool) -> bool:
        on_conflict = ("DO UPDATE SET body = EXCLUDED.body, updated = EXCLUDED.updated"
                       if overwrite else "DO NOTHING")
        return self._x(f"INSERT INTO roles VALUES (%s, %s, %s) ON CONFLICT (name) {on_conflict}",
                       (name, json.dumps(role), time.time())) == 1

    def get_role(self, name: str) -> dict[str, Any] | None:
        rows = self._q("SELECT body FROM roles WHERE name = %s", (name,))
        return json.loads(rows[0][0]) if rows else None

    def list_roles(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._q("SELECT body FROM roles ORDER BY name")]

    def delete_role(self, name: str) -> bool:
        return self._x("DELETE FROM roles WHERE name = %s", (name,)) == 1

    # bots
    def create_bot(self, bot: BotRecord) -> bool:
        return self._x(
            f"INSERT INTO bots ({_BOT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING",
            (bot.name, json.dumps(bot.roles), bot.generation, json.dumps(bot.traits),
             bot.created, bot.last_seen, bot.instance_id, json.dumps(bot.issued)),
        ) == 1

    def get_bot(self, name: str) -> BotRecord | None:
        rows = self._q(f"SELECT {_BOT_COLUMNS} FROM bots WHERE name = %s", (name,))
        return _bot(rows[0]) if rows else None

    def list_bots(self) -> list[BotRecord]:
        return [_bot(r) for r in self._q(f"SELECT {_BOT_COLUMNS} FROM bots ORDER BY name")]

    def set_bot_roles(self, name: str, roles: list[str]) -> bool:
        return self._x("UPDATE bots SET roles = %s WHERE name = %s",
                       (json.dumps(roles), name)) == 1

    def delete_bot(self, name: str) -> bool:
        def delete(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                conn.execute("DELETE FROM tokens WHERE bot_name = %s", (name,))
                return conn.execute("DELETE FROM bots WHERE name = %s", (name,)).rowcount == 1
        return self._conn.run(delete, read=False)

    def bump_generation(self, name: str, expected: int, now: float,
                        issued: dict[str, Any]) -> bool:
        return self._x(
            "UPDATE bots SET generation = generation + 1, last_seen = %s, issued = %s "
            "WHERE name = %s AND generation = %s",
            (now, json.dumps(issued), name, expected),
        ) == 1

    def set_generation(self, name: str, generation: int, now: float, *,
                       instance_id: str, issued: dict[str, Any]) -> None:
        self._x("UPDATE bots SET generation = %s, last_seen = %s, instance_id = %s, "
                "issued = %s WHERE name = %s",
                (generation, now, instance_id, json.dumps(issued), name))

    # tokens
    def create_token(self, token: TokenRecord) -> None:
        self._x(f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                (token.token_id, token.kind, token.bot_name, token.expires, token.created,
                 token.used_at))

    def list_tokens(self) -> list[TokenRecord]:
        return [_token(r) for r in self._q(f"SELECT {_TOKEN_COLUMNS} FROM tokens "
                                           "ORDER BY created")]

    def delete_token(self, token_id_prefix: str) -> int:
        if not token_id_prefix:
            return 0
        return self._x("DELETE FROM tokens WHERE left(token_id, %s) = %s",
                       (len(token_id_prefix), token_id_prefix))

    def consume_token(self, token_id: str, now: float) -> TokenRecord:
        def consume(conn: psycopg.Connection[Any]) -> Row | None:
            return conn.execute(
                f"UPDATE tokens SET used_at = %s WHERE token_id = %s AND used_at IS NULL "
                f"AND expires > %s RETURNING {_TOKEN_COLUMNS}", (now, token_id, now)
            ).fetchone()
        row = self._conn.run(consume, read=False)
        if row is not None:
            return _token(row)
        rows = self._q(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_id = %s", (token_id,))
        if not rows:
            raise TokenUnusable("the token is not known to this cluster")
        if _token(rows[0]).used_at is not None:
            raise TokenUnusable("the token was already used")
        raise TokenUnusable("the token has expired")

    # locks
    def create_lock(self, lock: LockRecord) -> None:
        # the notice is sent at commit, with the row: a listener that hears it finds it
        self._x(f"WITH added AS (INSERT INTO locks ({_LOCK_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING lock_id) "
                f"SELECT pg_notify('{CHANNEL}', lock_id) FROM added",
                (lock.lock_id, lock.target_kind, lock.target, lock.message, lock.expires,
                 lock.created))

    def lock_notices(self) -> LockNotices:
        return LockNotices(self._conn_string)

    def list_locks(self, now: float | None = None) -> list[LockRecord]:
        sql = f"SELECT {_LOCK_COLUMNS} FROM locks"
        if now is None:
            rows = self._q(sql + " ORDER BY created")
        else:
            rows = self._q(sql + " WHERE expires IS NULL OR expires > %s ORDER BY created",
                           (now,))
        return [LockRecord(*r) for r in rows]

    def delete_lock(self, lock_id: str) -> bool:
        return self._x("DELETE FROM locks WHERE lock_id = %s", (lock_id,)) == 1

    # audit (the chain: pg_audit.py)
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
        sql = "SELECT id, time, type, fields FROM audit WHERE true"
        args: list[Any] = []
        if session is not None:  # the audit_session index (pg_schema migration 2)
            sql += " AND session = %s"
            args.append(session)
        if since is not None:
            sql += " AND time >= %s"
            args.append(since)
        if types:
            sql += " AND type = ANY(%s)"
            args.append(list(types))
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        rows = self._q(sql, args)
        events = [AuditEvent(int(r[0]), r[1], r[2], json.loads(r[3])) for r in reversed(rows)]
        if session is not None:  # the column is an unhashed index: the hashed field decides
            events = [e for e in events if e.fields.get("session") == session]
        return events

    def get_meta(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._x("INSERT INTO meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    # agents and grants (pg_schema migration 3)
    def put_agent(self, agent: AgentHeartbeat) -> None:
        self._x(f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (host_id) DO UPDATE SET hostname = EXCLUDED.hostname, "
                "addr = EXCLUDED.addr, databases = EXCLUDED.databases, "
                "expires = EXCLUDED.expires, last_heartbeat = EXCLUDED.last_heartbeat, "
                "cert_sha256 = EXCLUDED.cert_sha256",
                (agent.host_id, agent.hostname, agent.addr, json.dumps(agent.databases),
                 agent.expires, agent.last_heartbeat, agent.cert_sha256))

    def list_agents(self) -> list[AgentHeartbeat]:
        return [AgentHeartbeat(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])
                for r in self._q(f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY host_id")]

    def delete_agent(self, host_id: str, *, expired_at: float | None = None) -> bool:
        if expired_at is None:
            return self._x("DELETE FROM agents WHERE host_id = %s", (host_id,)) == 1
        return self._x("DELETE FROM agents WHERE host_id = %s AND expires <= %s",
                       (host_id, expired_at)) == 1

    # web users and tickets (pg_schema migration 4)
    def put_user(self, name: str, body: dict[str, Any], *, overwrite: bool) -> bool:
        conflict = ("ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body" if overwrite
                    else "ON CONFLICT (name) DO NOTHING")
        return self._x(f"INSERT INTO users (name, body) VALUES (%s, %s) {conflict}",
                       (name, json.dumps(body))) == 1

    def get_user(self, name: str) -> dict[str, Any] | None:
        rows = self._q("SELECT body FROM users WHERE name = %s", (name,))
        return dict(json.loads(rows[0][0])) if rows else None

    def list_users(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r[0], json.loads(r[1])) for r in
                self._q("SELECT name, body FROM users ORDER BY name")]

    def delete_user(self, name: str) -> bool:
        self._x("DELETE FROM tickets WHERE user_name = %s", (name,))
        return self._x("DELETE FROM users WHERE name = %s", (name,)) == 1

    def put_ticket(self, key: str, user: str, body: dict[str, Any], expires: float) -> None:
        self._x("INSERT INTO tickets (key, user_name, body, expires) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET user_name = EXCLUDED.user_name, "
                "body = EXCLUDED.body, expires = EXCLUDED.expires",
                (key, user, json.dumps(body), expires))

    def get_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        rows = self._q("SELECT user_name, body, expires FROM tickets WHERE key = %s", (key,))
        return (rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def take_ticket(self, key: str) -> tuple[str, dict[str, Any], float] | None:
        def take(conn: psycopg.Connection[Any]) -> Row | None:
            return conn.execute("DELETE FROM tickets WHERE key = %s "
                                "RETURNING user_name, body, expires", (key,)).fetchone()
        row = self._conn.run(take, read=False)
        return (row[0], json.loads(row[1]), row[2]) if row else None

    def delete_tickets(self, user: str, *, expired_at: float | None = None) -> int:
        if user:
            return self._x("DELETE FROM tickets WHERE user_name = %s", (user,))
        return self._x("DELETE FROM tickets WHERE expires <= %s", (expired_at or 0.0,))

    def put_grant(self, key: str, body: str, expires: float) -> None:
        self._x("INSERT INTO grants (key, body, expires) VALUES (%s, %s, %s)",
                (key, body, expires))

    def take_grant(self, key: str) -> str | None:
        def take(conn: psycopg.Connection[Any]) -> Row | None:
            return conn.execute("DELETE FROM grants WHERE key = %s RETURNING body",
                                (key,)).fetchone()
        row = self._conn.run(take, read=False)
        return str(row[0]) if row else None

    def prune_grants(self, now: float) -> int:
        return self._x("DELETE FROM grants WHERE expires <= %s", (now,))

    def close(self) -> None:
        self._audit.close()
        self._conn.close()
