"""The PostgreSQL storage's schema: numbered migrations, applied in order at start.

`schema_version` holds one row, the number of the last migration applied. Starting
applies the missing ones in one transaction under an advisory lock, so two processes
starting on a fresh database do not both create the tables. A database whose version is
newer than this code knows is refused: an older mwiproxy must not write rows a newer
one reads differently.

The audit table is append-only: triggers refuse UPDATE, DELETE and TRUNCATE. A
superuser can drop them (as anyone who can write the SQLite file can); a trigger found
missing or disabled at start is reported (audit_guards_missing) and put back.
"""

from __future__ import annotations

from typing import Any

import psycopg

# the pg_advisory_xact_lock key migrations run under
MIGRATION_LOCK = 0x6D77_6901

APPEND_ONLY = "the audit log is append-only"
GUARDS = {
    "audit_no_update": "BEFORE UPDATE ON audit FOR EACH ROW",
    "audit_no_delete": "BEFORE DELETE ON audit FOR EACH ROW",
    "audit_no_truncate": "BEFORE TRUNCATE ON audit FOR EACH STATEMENT",
}
_GUARD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION mwi_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$;
"""

MIGRATIONS: list[str] = [
    # 1: everything SQLite stores, the audit tail in a row of its own
    """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE roles (name text PRIMARY KEY, body text NOT NULL,
                        updated double precision NOT NULL);
    CREATE TABLE bots (
        name text PRIMARY KEY, roles text NOT NULL, generation bigint NOT NULL,
        traits text NOT NULL, created double precision NOT NULL,
        last_seen double precision NOT NULL, instance_id text NOT NULL DEFAULT '',
        issued text NOT NULL DEFAULT '{}');
    CREATE TABLE tokens (
        token_id text PRIMARY KEY, kind text NOT NULL, bot_name text NOT NULL,
        expires double precision NOT NULL, created double precision NOT NULL,
        used_at double precision);
    CREATE TABLE locks (
        lock_id text PRIMARY KEY, target_kind text NOT NULL, target text NOT NULL,
        message text NOT NULL, expires double precision,
        created double precision NOT NULL);
    CREATE TABLE audit (
        id bigint PRIMARY KEY, time double precision NOT NULL, type text NOT NULL,
        fields text NOT NULL, prev_hash text, hash text);
    CREATE INDEX audit_time ON audit (time);
    CREATE TABLE audit_tail (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        head_id bigint, head_hash text, highest_id bigint NOT NULL);
    INSERT INTO audit_tail (head_id, head_hash, highest_id) VALUES (NULL, NULL, 0);
    """ + _GUARD_FUNCTION + "".join(
        f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION mwi_audit_append_only();\n"
        for name, when in GUARDS.items()),
    # 2: a database session's audit id as an (unhashed) index column, for
    # `query_audit(session=...)`; filled at append from the event's `session` field
    """
    ALTER TABLE audit ADD COLUMN session text;
    CREATE INDEX audit_session ON audit (session, id);
    """,
    # 3: database agents' heartbeats and session grants, shared by the cluster
    # processes (auth/agents.py, auth/agent_grants.py)
    """
    CREATE TABLE agents (
        host_id text PRIMARY KEY, hostname text NOT NULL, addr text NOT NULL,
        databases text NOT NULL, expires double precision NOT NULL,
        last_heartbeat double precision NOT NULL, cert_sha256 text NOT NULL);
    CREATE TABLE grants (key text PRIMARY KEY, body text NOT NULL,
                         expires double precision NOT NULL);
    CREATE INDEX grants_expires ON grants (expires);
    """,
    # 4: web users and their tickets (sessions, invites; auth/users.py)
    """
    CREATE TABLE users (name text PRIMARY KEY, body text NOT NULL);
    CREATE TABLE tickets (key text PRIMARY KEY, user_name text NOT NULL,
                          body text NOT NULL, expires double precision NOT NULL);
    CREATE INDEX tickets_user ON tickets (user_name);
    """,
]


class SchemaTooNew(Exception):
    """The database was migrated by a newer mwiproxy."""


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the missing migrations; returns the guards that were missing or disabled
    on an existing database (they have been put back)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the PostgreSQL storage has schema version {version}; this mwiproxy "
                f"knows versions up to {len(MIGRATIONS)}: run a newer mwiproxy")
        missing = restore_guards(conn) if version else []
        for sql in MIGRATIONS[version:]:
            conn.execute(sql)  # type: ignore[arg-type]  # our own constant text
        if row is None:
            conn.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
    return missing


def restore_guards(conn: psycopg.Connection[Any]) -> list[str]:
    """Inside the migration transaction: put back append-only triggers that are gone,
    disabled or no longer call the guard function."""
    rows = conn.execute(
        "SELECT t.tgname, t.tgenabled, p.proname, p.prosrc FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'audit'::regclass AND NOT t.tgisinternal").fetchall()
    found = {name: (enabled, func, src) for name, enabled, func, src in rows}
    missing = []
    for name, when in GUARDS.items():
        state = found.get(name)
        if state is None:
            missing.append(name)
        elif (state[0] == "D" or state[1] != "mwi_audit_append_only"
              or APPEND_ONLY not in state[2]):
            missing.append(f"{name} (altered)")
        else:
            continue
        conn.execute(f"DROP TRIGGER IF EXISTS {name} ON audit")  # type: ignore[arg-type]
        conn.execute(_GUARD_FUNCTION)  # type: ignore[arg-type]
        conn.execute(f"CREATE TRIGGER {name} {when} "  # type: ignore[arg-type]
                     "EXECUTE FUNCTION mwi_audit_append_only()")
    return missing
