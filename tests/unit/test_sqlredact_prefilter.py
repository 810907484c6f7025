"""sqlredact's pre-filter (statements without the word PASSWORD are not scanned) changes
no result: the same statements redacted with and without it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy.wire import sqlredact

PIECES = ["ALTER", "create", "ROLE", "user", "Group", " ", "\n", "x", "PASSWORD", "password",
          "PaSsWoRd", "PAſſWORD", "pass", "word", "'s'", "E'a\\'b'", "$$", "$t$", "\"", "'",
          "--", "/*", "*/", ";", "=", "NULL", "SELECT 1", "DO", "é", "$"]


def _unfiltered(sql: str) -> tuple[str, bool]:
    saved = sqlredact._MAYBE_PASSWORD
    sqlredact._MAYBE_PASSWORD = re.compile("")  # matches everything: always scanned
    try:
        return sqlredact.redact_statement(sql)
    finally:
        sqlredact._MAYBE_PASSWORD = saved


@pytest.mark.parametrize("sql", [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "ALTER ROLE x PASSWORD 's'", "alter role x paſſword 's'", "ALTER ROLE x PASSWORD NULL",
    "DO $$ BEGIN ALTER ROLE x PASSWORD 's'; END $$", "CREATE USER u; SELECT 'password'",
    "ALTER USER MAPPING FOR u SERVER s OPTIONS (password 'p')", "",
])
def test_same_as_the_full_scan(sql: str) -> None:
    assert sqlredact.redact_statement(sql) == _unfiltered(sql)


def test_no_password_word_is_returned_unread() -> None:
    sql = "ALTER ROLE x WITH LOGIN 'pass' 'word'"
    assert sqlredact.redact_statement(sql) == (sql, False)
    assert sqlredact.redact_statement("alter role x paſſword 's'")[1]  # re.I folds ſ to s


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24))
def test_generated_statements_agree(pieces: list[str]) -> None:
    sql = "".join(pieces)
    assert sqlredact.redact_statement(sql) == _unfiltered(sql)
