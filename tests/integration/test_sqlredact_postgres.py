"""wire/sqlredact.py against PostgreSQL's own lexer: each redacted statement is run on a
real server, which must accept it and set the role's password to exactly `****`. A
mask that left a tail of the literal, or swallowed a token next to it, would fail to
parse or set another password; a statement that must stay untouched is compared whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mwiproxy.devkit import postgres
from mwiproxy.wire.sqlredact import redact_statement

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not postgres.available(), reason="PostgreSQL 15 not installed")]

# (statement with {r} for the role's name, the setup it needs, the password PostgreSQL sets)
MASKED = [
    ("CREATE ROLE {r} PASSWORD 'sec''ret'", "", "sec'ret"),
    ("CREATE ROLE {r} WITH LOGIN ENCRYPTED PASSWORD E'se\\'c\\\\' VALID UNTIL 'infinity'", "",
     "se'c\\"),
    ("CREATE ROLE {r} PASSWORD $$s'e$$", "", "s'e"),
    ("CREATE ROLE {r} PASSWORD $t$ $$ $t$ LOGIN", "", " $$ "),
    ("CREATE ROLE {r} PASSWORD U&'d\\0061t'", "", "dat"),
    ("CREATE ROLE {r} PASSWORD 'a'\n  'b' LOGIN", "", "ab"),
    ("CREATE ROLE {r} PASSWORD 'a' -- c\n 'b'", "", "ab"),
    ("CREATE ROLE {r} PASSWORD /* x /* y */ */ 's'", "", "s"),
    ("CREATE /* c */ ROLE -- d\n {r} PASSWORD 's'", "", "s"),
    ("SELECT ';CREATE ROLE x'; CREATE ROLE {r} PASSWORD 's'; SELECT 'password'", "", "s"),
    ("DO $d$ BEGIN CREATE ROLE {r} PASSWORD 's'; END $d$", "", "s"),
    ("CREATE ROLE {r} PASSWORD 'a\\'b'", "SET standard_conforming_strings = off", "a'b"),
    ("CREATE ROLE {r} PASSWORD 'a\\'", "", "a\\"),
    ("CREATE ROLE {r}; ALTER USER {r} WITH ENCRYPTED PASSWORD 'p'", "", "p"),
    ("CREATE GROUP {r} PASSWORD 'p'", "", "p"),
]
UNTOUCHED = [
    "CREATE ROLE {r} PASSWORD NULL",
    "CREATE ROLE {r} VALID UNTIL 'infinity'",
    "CREATE ROLE {r}; ALTER ROLE {r} SET search_path = 'password'",
    "SELECT 'ALTER ROLE x PASSWORD ''s''' AS password",
]


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection]:
    server = postgres.PostgresServer().start()
    try:
        with psycopg.connect(host=str(server.root), port=server.port, user="postgres",
                             dbname="postgres", autocommit=True) as c:
            c.execute("SET password_encryption = 'md5'")  # readable back: md5(pw || name)
            yield c
    finally:
        server.stop()


def _run(conn: psycopg.Connection, setup: str, sql: str) -> None:
    """As a client's simple Query: several statements in one string, like psql -c."""
    conn.execute("RESET standard_conforming_strings")
    if setup:
        conn.execute(setup)
    result = conn.pgconn.exec_(sql.encode())
    assert result.error_message == b"", (sql, result.error_message)


def _password(conn: psycopg.Connection, role: str) -> str | None:
    row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert row is not None, role
    return row[0]


def _md5(password: str, role: str) -> str:
    return "md5" + hashlib.md5((password + role).encode()).hexdigest()


@pytest.mark.parametrize(("template", "setup", "secret"), MASKED)
def test_postgres_reads_the_masked_literal_as_the_whole_password(conn, template, setup, secret):
    role = f"r{abs(hash(template)) % 10**9}"
    original = template.format(r=role)
    _run(conn, setup, original)  # the case means what it says: PostgreSQL sets `secret`
    assert _password(conn, role) == _md5(secret, role)
    conn.execute(f"DROP ROLE {role}")
    redacted, masked = redact_statement(original)
    assert masked and redacted != original
    _run(conn, setup, redacted)
    assert _password(conn, role) == _md5("****", role), redacted
    conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("template", UNTOUCHED)
def test_postgres_statements_without_a_password_literal_stay_as_written(conn, template):
    role = f"u{abs(hash(template)) % 10**9}"
    original = template.format(r=role)
    assert redact_statement(original) == (original, False)
    _run(conn, "", original)
    if "CREATE ROLE" in template:
        assert _password(conn, role) is None
        conn.execute(f"DROP ROLE {role}")


_BLANKS = [" ", "\n", " /* c */ ", " -- c\n", "/* a /* b */ c */", "\t\n  "]


def _quoted(form: str, secret: str) -> str:
    if form == "std":
        return "'" + secret.replace("'", "''") + "'"
    if form == "esc":
        return "E'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == "uni":
        return "U&'" + secret.replace("\\", "\\\\").replace("'", "''") + "'"
    return "$q$" + secret + "$q$"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=st.text(alphabet="ab'\\$ ;-/*\n\"", min_size=1, max_size=12)
       .filter(lambda s: "$q$" not in s and not s.endswith("$q")),
       form=st.sampled_from(["std", "esc", "uni", "dollar"]),
       before=st.sampled_from(_BLANKS), after=st.sampled_from(_BLANKS))
def test_generated_password_statements_agree_with_postgres(conn, secret, form, before, after):
    role = "gen_role"
    sql = f"CREATE ROLE {role} WITH{before}PASSWORD{before}{_quoted(form, secret)}{after}LOGIN"
    _run(conn, "", sql)
    assert _password(conn, role) == _md5(secret, role)
    conn.execute(f"DROP ROLE {role}")
    redacted, masked = redact_statement(sql)
    assert masked
    _run(conn, "", redacted)
    assert _password(conn, role) == _md5("****", role), redacted
    conn.execute(f"DROP ROLE {role}")
