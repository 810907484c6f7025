"""Names of things, each checked whole against a documented character set.

`re.match` with a pattern ending in `$` also accepts the same text plus a final newline,
so a bot `example\\n` once passed as `example`: it displayed as `example`, and a lock on
`example` did not stop it (issue 9). Every check here is a full-string match
(`re.fullmatch`), refuses any non-printable character (control characters, NUL, newline,
bidi overrides), empty names and over-long ones, and says what is allowed.

Validators return the value, so `name = names.bot_name(name)` reads as a check. They raise
`InvalidName` (a ValueError); the auth layer turns it into BadRequest, config into
ConfigError with file:line:key. `KINDS` is the table the README's "Names" section shows.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "InvalidName",
    "NameKind",
    "agent_hostname",
    "bot_name",
    "check",
    "database_route",
    "database_service",
    "db_name",
    "db_user",
    "join_token",
    "label_key",
    "lock_target",
    "markdown_table",
    "role_name",
    "token_id",
    "user_name",
]

SHOWN_CHARS = 48  # longer values are cut in error messages (they may be megabytes)
# PostgreSQL silently truncates identifiers to NAMEDATALEN-1 bytes: a longer user name
# would be checked as one name and logged in as another. CockroachDB keeps the limit.
POSTGRES_MAX_BYTES = 63
_TRUNCATING_PROTOCOLS = frozenset({"postgres", "cockroachdb"})


@dataclass(frozen=True)
class NameKind:
    key: str  # short id, e.g. "bot"
    title: str  # what the operator reads: "bot name"
    first: str  # regex class for the first character
    rest: str  # regex class for the others
    max_len: int
    allowed: str  # the character set in words
    min_len: int = 1
    unit: str = "characters"  # or "bytes" (UTF-8), where the server counts bytes
    length_note: str = ""  # for the documentation table
    secret: bool = False  # never echoed in errors (a mistyped token is still mostly a token)

    def length(self, max_len: int | None = None) -> str:
        top = self.max_len if max_len is None else max_len
        if self.min_len == top:
            return f"exactly {top} {self.unit}"
        if self.min_len > 1:
            return f"{self.min_len} to {top} {self.unit}"
        return f"at most {top} {self.unit}"

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        """The shape, used with fullmatch; the length is checked apart (some are bytes)."""
        return re.compile(f"{self.first}{self.rest}*", re.DOTALL)


_NAME_CHARS = "[a-zA-Z0-9._@-]"
_ANY_PRINTABLE = "."  # non-printables are refused before the pattern is tried

BOT = NameKind(
    "bot", "bot name", "[a-z0-9]", "[a-z0-9._-]", 60,
    "lower-case letters, digits, '.', '_', '-'; starts with a letter or digit")
ROLE = NameKind("role", "role name", _NAME_CHARS, _NAME_CHARS, 128,
                "letters, digits, '.', '_', '@', '-'")
USER = NameKind("user", "user name", _NAME_CHARS, _NAME_CHARS, 255,
                "letters, digits, '.', '_', '@', '-' (e.g. bot-example, agent.HOST_ID, admin)")
JOIN_TOKEN = NameKind("join-token", "join token", "[0-9a-f]", "[0-9a-f]", 32,
                      "lower-case hex digits, as `tokens add` prints", min_len=32,
                      secret=True)
# the sha256 of a token in hex, or a prefix of it as `tokens ls` shows (12 digits)
TOKEN_ID = NameKind("token-id", "token id", "[0-9a-f]", "[0-9a-f]", 64,
                    "lower-case hex digits", min_len=12)
DATABASE_SERVICE = NameKind(
    "database", "database service name", "[a-z0-9]", "[a-z0-9._-]", 128,
    "lower-case letters, digits, '.', '_', '-'; starts with a letter or digit")
LABEL_KEY = NameKind("label-key", "label key", "[a-zA-Z0-9/._:*-]", "[a-zA-Z0-9/._:*-]", 256,
                     "letters, digits, '/', '.', '_', ':', '*', '-' (as Teleport); "
                     "'*' alone is the wildcard key of role selectors")
_DB_NOTE = f"{POSTGRES_MAX_BYTES} for PostgreSQL and CockroachDB"
DB_USER = NameKind("db-user", "database user", _ANY_PRINTABLE, _ANY_PRINTABLE, 255,
                   "any printable characters, spaces included", unit="bytes",
                   length_note=_DB_NOTE)
DB_NAME = NameKind("db-name", "database name", _ANY_PRINTABLE, _ANY_PRINTABLE, 255,
                   "any printable characters, spaces included", unit="bytes",
                   length_note=_DB_NOTE)
AGENT_HOSTNAME = NameKind("hostname", "agent hostname", r"\S", r"\S", 253,
                          "any printable characters except spaces")

KINDS: tuple[NameKind, ...] = (BOT, ROLE, USER, JOIN_TOKEN, TOKEN_ID, DATABASE_SERVICE,
                               LABEL_KEY, DB_USER, DB_NAME, AGENT_HOSTNAME)
_LOCK_KINDS = {"bot": BOT, "role": ROLE, "user": USER}


class InvalidName(ValueError):
    """A name refused; the message names the kind, shows the value and what is allowed."""

    def __init__(self, kind: NameKind, value: object, why: str, max_len: int) -> None:
        self.kind = kind
        self.value = value
        self.reason = why
        shown = "(not shown)" if kind.secret else _shown(value)
        super().__init__(f"invalid {kind.title} {shown}: {why} "
                         f"(use {kind.allowed}; {kind.length(max_len)})")


def _shown(value: object) -> str:
    if not isinstance(value, str) or len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def check(kind: NameKind, value: object, *, max_len: int | None = None) -> str:
    """`value` if it is a valid name of this kind, else InvalidName saying why."""
    limit = kind.max_len if max_len is None else max_len
    why = _problem(kind, value, limit)
    if why:
        raise InvalidName(kind, value, why, limit)
    assert isinstance(value, str)
    return value


def _problem(kind: NameKind, value: object, limit: int) -> str:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    for i, c in enumerate(value):
        if not c.isprintable():
            what = "control" if unicodedata.category(c) == "Cc" else "non-printable"
            return f"the {what} character U+{ord(c):04X} at position {i} is not allowed"
    size = len(value.encode("utf-8", "surrogatepass")) if kind.unit == "bytes" else len(value)
    if size > limit:
        return f"{size} {kind.unit} long"
    if size < kind.min_len:
        return f"only {size} {kind.unit} long"
    if kind.pattern.fullmatch(value):
        return ""
    return _bad_character(kind, value)


def _bad_character(kind: NameKind, value: str) -> str:
    """Which character made the shape fail, for the operator."""
    for i, c in enumerate(value):
        if re.fullmatch(kind.first if i == 0 else kind.rest, c, re.DOTALL):
            continue
        if i == 0 and re.fullmatch(kind.rest, c, re.DOTALL):
            return f"it may not start with {c!r}"
        return f"{c!r} at position {i} is not a valid name character"
    return "not a valid name"


# One function per kind: what the entry points call.

def bot_name(value: object) -> str:
    return check(BOT, value)


def role_name(value: object) -> str:
    return check(ROLE, value)


def user_name(value: object) -> str:
    return check(USER, value)


def join_token(value: object) -> str:
    return check(JOIN_TOKEN, value)


def token_id(value: object) -> str:
    return check(TOKEN_ID, value)


def database_service(value: object) -> str:
    return check(DATABASE_SERVICE, value)


def label_key(value: object) -> str:
    return check(LABEL_KEY, value)


def _db_limit(protocol: str) -> int | None:
    return POSTGRES_MAX_BYTES if protocol in _TRUNCATING_PROTOCOLS else None


def db_user(value: object, protocol: str = "") -> str:
    """A database user; 63 bytes at most where the server would truncate a longer one."""
    return check(DB_USER, value, max_len=_db_limit(protocol))


def db_name(value: object, protocol: str = "") -> str:
    return check(DB_NAME, value, max_len=_db_limit(protocol))


def database_route(service: str, protocol: str, username: str, database: str) -> None:
    """The names a database certificate routes to; an empty user or database is unset."""
    database_service(service)
    if username:
        db_user(username, protocol)
    if database:
        db_name(database, protocol)


def agent_hostname(value: object) -> str:
    return check(AGENT_HOSTNAME, value)


def lock_target(target_kind: str, value: object) -> str:
    """The target of a lock: a bot, role or user name, checked as that kind."""
    kind = _LOCK_KINDS.get(target_kind)
    if kind is None:
        raise ValueError(f"lock target must be one of {', '.join(_LOCK_KINDS)}")
    return check(kind, value)


def markdown_table() -> str:
    """The kinds as the README's "Names" table."""
    rows = ["| name | characters | length |", "|---|---|---|"]
    for kind in KINDS:
        note = f" ({kind.length_note})" if kind.length_note else ""
        rows.append(f"| {kind.title} | {kind.allowed} | {kind.length()}{note} |")
    return "\n".join(rows)
