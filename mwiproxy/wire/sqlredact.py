"""Redaction of a recorded SQL statement: the password of CREATE/ALTER ROLE|USER|GROUP.

`redact_statement` masks the literal that follows `PASSWORD` in a role statement
(`CREATE ROLE x WITH ENCRYPTED PASSWORD 'secret'` -> `... PASSWORD '****'`). It finds
that literal with a PostgreSQL lexer, not a regular expression over the text: quoted
strings ('' escapes), E-strings (backslash escapes), dollar quotes ($tag$...$tag$, whose
bodies are read again as SQL so a DO block's `ALTER ROLE` is seen), quoted identifiers
("password" is a name, not the keyword), `--` and nested `/* */` comments, and `;`
between statements. `PASSWORD NULL` is left as it is. Forms PostgreSQL refuses there
(`PASSWORD "s"`, `PASSWORD = 's'`, `N's'`) are masked too: a failed statement is
recorded as well.

It is given the recorded prefix of a statement, so it never raises and a literal cut
by the end of the input is masked to the end. It is linear: the scan jumps from one
token that matters to the next with compiled patterns (C speed), nested dollar-quote
bodies are re-read at most `_MAX_DEPTH` times, and a closing quote is searched once. A
statement without the word PASSWORD (most of them) is not scanned at all.

A plain '...' in password position is masked as far as the longer of its two readings
(standard_conforming_strings on or off), so a backslash in the password never leaves a
tail of it in the record. What it cannot see: a password inside a string that is
itself SQL (`EXECUTE 'ALTER ROLE x PASSWORD ''s'''`), or built by concatenation.

`param_digest` is the recorded form of a bind parameter under the `hash` policy.
"""

from __future__ import annotations

import re

from mwiproxy._native import hmac_digests

MASK = "'****'"
DIGEST_PREFIX = "hmac-sha256:"
_DIGEST_HEX = 32
_MAX_DEPTH = 3  # dollar quotes re-read as SQL inside dollar quotes: bounded work
_SHORTEST_ROLE_PASSWORD = len("alter user x password''")  # a shorter body holds none

_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")

# Where the scan stops: outside a role statement only a role statement's start (and
# what could hide one) matters; inside one, its end and the PASSWORD keyword.
# Runs of plain strings, identifiers and line comments are passed over inside the
# pattern; a keyword only stops the scan where what follows could make it matter. The
# leading lookahead lets the regex engine skip characters that start nothing at C speed.
_SKIP_RUNS = (
    r"""(?:(?:'[^']*'|"[^"]*"|--[^\n]*(?:\n|$))\s*)+"""  # strings, names, line comments
    r"""|(?:e(?<![\w$]e)'(?:[^'\\]|\\.|'')*'\s*)+"""  # E'...' strings
    r"""|'|"|/\*|\$(?<![\w$]\$)(?!\d)"""  # the rest, read by the scan: see _skip_*
)
_BLANK_THEN = r"(?=(?:\s|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/|--[^\n]*\n)*+(?:/\*|--|{}))"
_OUTSIDE = re.compile(
    r"(?=['\"\-/$eac])(?:" + _SKIP_RUNS + r"|(?:alter|create)\b"
    + _BLANK_THEN.format(r"(?:role|user|group)\b") + ")",
    re.I | re.S,
)
_INSIDE = re.compile(
    r"(?=['\"\-/$e;p])(?:" + _SKIP_RUNS + r"|;|password\b"
    + _BLANK_THEN.format(r"(?:['\"$=]|[ebnx]'|u&')") + ")",
    re.I | re.S,
)
_ROLE_KIND = re.compile(r"(?:role|user|group)\b", re.I)

# Bodies after the opening quote. Possessive (*+): a literal cut by the end of the input
# must run to the end, not be read back to an earlier '' as its closing quote.
_STD_BODY = re.compile(r"(?:[^']|'')*+'")
_ESC_BODY = re.compile(r"(?:[^'\\]|\\.|'')*+'", re.S)  # E'...': backslash escapes
_IDENT_BODY = re.compile(r'(?:[^"]|"")*+"')
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_COMMENT_MARK = re.compile(r"/\*|\*/")
# 'a'\n'b' is one literal 'ab': blanks (with -- comments) holding a newline join them
_JOIN = r"(?:[ \t\f\r]|--[^\n]*)*\n(?:\s|--[^\n]*\n)*"
_CONTINUATION = re.compile(_JOIN + "'")
_STD_RUN = re.compile(r"'(?:[^']|'')*+'(?:" + _JOIN + r"'(?:[^']|'')*+')*")
_ESC_RUN = re.compile(r"'(?:[^'\\]|\\.|'')*+'(?:" + _JOIN + r"'(?:[^'\\]|\\.|'')*+')*", re.S)
_SPACE = re.compile(r"\s+")
# The scan masks only after a match of _INSIDE's `password\b`: a statement without the
# word (the same pattern flags, so the same case folding) is returned as it is, unread.
_MAYBE_PASSWORD = re.compile(r"password", re.I)


def redact_statement(sql: str) -> tuple[str, bool]:
    """Return `sql` with role passwords replaced by `'****'`, and whether any was."""
    if _MAYBE_PASSWORD.search(sql) is None:  # nothing the scan could mask: skip it
        return sql, False
    edits: list[tuple[int, int, str]] = []
    _scan(sql, 0, len(sql), 0, edits)
    if not edits:
        return sql, False
    parts: list[str] = []
    last = 0
    for start, end, text in edits:
        parts.append(sql[last:start])
        parts.append(text)
        last = end
    parts.append(sql[last:])
    return "".join(parts), True


def param_digest(value: bytes | None, key: bytes) -> str | None:
    """A bind parameter as recorded under `hash`: None for SQL NULL, else a keyed digest."""
    return param_digests([value], key)[0]


def param_digests(values: list[bytes | None], key: bytes) -> list[str | None]:
    """param_digest of each value, in one native call (_native.hmac_digests)."""
    return hmac_digests(key, values, DIGEST_PREFIX, _DIGEST_HEX)


def _scan(s: str, pos: int, end: int, depth: int, edits: list[tuple[int, int, str]]) -> None:
    """Record the password literals of s[pos:end] in `edits`, in order."""
    in_role = False
    while pos < end:
        match = (_INSIDE if in_role else _OUTSIDE).search(s, pos, end)
        if match is None:
            return
        start = match.start()
        token = match.group()
        if len(token) > 1 and token[0] in "'\"-eE":
            pos = match.end()  # a whole run of strings, identifiers or comments
        elif token[0] in "'\"-/":
            pos = _skip_quoted_or_comment(s, start, end, depth, edits)
        elif token == "$":
            pos = _skip_dollar(s, start, end, depth, edits)
            while s.startswith("$", pos, end):  # $a$...$a$$b$...$b$: the next one
                pos = _skip_dollar(s, pos, end, depth, edits)
        elif token == ";":
            in_role = False
            pos = start + 1
        elif not _standalone(s, start, match.end(), end):
            pos = match.end()
        elif in_role:  # the PASSWORD keyword
            pos = _mask_password(s, match.end(), end, edits)
        else:  # ALTER / CREATE: a role statement when ROLE, USER or GROUP follows
            word_end = start + (5 if token[0] in "aA" else 6)
            if not _standalone(s, start, word_end, end):
                pos = word_end
                continue
            pos = _skip_blank(s, word_end, end)
            kind = _ROLE_KIND.match(s, pos, end)
            if kind is not None and _standalone(s, pos, kind.end(), end):
                in_role = True
                pos = kind.end()


def _standalone(s: str, start: int, stop: int, end: int) -> bool:
    """True when s[start:stop] is a whole word (not part of an identifier like a$b)."""
    if start > 0 and (s[start - 1] in _IDENT_CHARS or s[start - 1].isalnum()):
        return False
    return not (stop < end and (s[stop] in _IDENT_CHARS or s[stop].isalnum()))


def _skip_quoted_or_comment(
    s: str, start: int, end: int, depth: int, edits: list[tuple[int, int, str]]
) -> int:
    """The position after the string, identifier, dollar quote or comment at `start`."""
    char = s[start]
    if char == "'":
        return _string_end(s, start, end, _escaped_string(s, start))
    if char == '"':
        return _body_end(_IDENT_BODY, s, start + 1, end)
    if char == "-":
        newline = s.find("\n", start, end)
        return end if newline < 0 else newline + 1
    if char == "/":
        return _comment_end(s, start, end)
    return _skip_dollar(s, start, end, depth, edits)


def _skip_dollar(
    s: str, start: int, end: int, depth: int, edits: list[tuple[int, int, str]]
) -> int:
    """Past a dollar quote (its body read as SQL, a function's or a DO block's)."""
    tag = _DOLLAR_TAG.match(s, start, end)
    if tag is None:
        return start + 1  # a lone `$`
    close = s.find(tag.group(), tag.end(), end)
    body_end = end if close < 0 else close
    if depth < _MAX_DEPTH and body_end - tag.end() >= _SHORTEST_ROLE_PASSWORD:
        _scan(s, tag.end(), body_end, depth + 1, edits)
    return end if close < 0 else close + len(tag.group())


def _escaped_string(s: str, quote: int) -> bool:
    """True when the quote at `quote` opens an E'...' string (E not ending a word)."""
    if quote == 0 or s[quote - 1] not in "eE":
        return False
    return quote < 2 or s[quote - 2] not in _IDENT_CHARS


def _string_end(s: str, quote: int, end: int, escaped: bool) -> int:
    return _body_end(_ESC_BODY if escaped else _STD_BODY, s, quote + 1, end)


def _body_end(body: re.Pattern[str], s: str, pos: int, end: int) -> int:
    match = body.match(s, pos, end)
    return end if match is None else match.end()  # unterminated: runs to the end


def _comment_end(s: str, start: int, end: int) -> int:
    depth = 0
    for mark in _COMMENT_MARK.finditer(s, start, end):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return end


def _skip_blank(s: str, pos: int, end: int) -> int:
    """Past whitespace and comments."""
    while pos < end:
        space = _SPACE.match(s, pos, end)
        if space is not None:
            pos = space.end()
        elif s.startswith("--", pos, end) or s.startswith("/*", pos, end):
            pos = _skip_quoted_or_comment(s, pos, end, _MAX_DEPTH, [])
        else:
            return pos
    return pos


def _mask_password(s: str, pos: int, end: int, edits: list[tuple[int, int, str]]) -> int:
    """Mask the literal after PASSWORD (at `pos`) if there is one; the position after."""
    start = _skip_blank(s, pos, end)
    if s.startswith("=", start, end):  # `PASSWORD = 's'` fails, but is recorded
        start = _skip_blank(s, start + 1, end)
    if start >= end:
        return end
    char = s[start]
    if char in "eE" and s.startswith("'", start + 1, end):
        stop = _literal_end(s, start + 1, end, escaped=True)
    elif char in "uU" and s.startswith("&'", start + 1, end):
        stop = _literal_end(s, start + 2, end)
    elif char in "nNbBxX" and s.startswith("'", start + 1, end):  # refused, still recorded
        stop = _literal_end(s, start + 1, end)
    elif char == "'":
        stop = _literal_end(s, start, end)
    elif char == '"':  # a password in double quotes: a syntax error that is recorded
        stop = _body_end(_IDENT_BODY, s, start + 1, end)
    elif char == "$":
        tag = _DOLLAR_TAG.match(s, start, end)
        if tag is None:
            return start
        close = s.find(tag.group(), tag.end(), end)
        stop = end if close < 0 else close + len(tag.group())
    else:
        return start  # PASSWORD NULL, or the word used as a name: nothing to mask
    edits.append((start, stop, MASK))
    return stop


def _literal_end(s: str, quote: int, end: int, escaped: bool = False) -> int:
    """The end of the literal at `quote` with its continuations: an E'...' one read with
    backslash escapes, a plain one as far as the longer of its two whole readings (see
    the module doc)."""
    stop = _reading_end(_ESC_RUN, s, quote, end)
    return stop if escaped else max(stop, _reading_end(_STD_RUN, s, quote, end))


def _reading_end(run: re.Pattern[str], s: str, quote: int, end: int) -> int:
    """Where the literal at `quote`, continuations included, ends when read by `run`."""
    while True:
        match = run.match(s, quote, end)
        if match is None:
            return end  # unterminated: to the end of what was recorded
        more = _CONTINUATION.match(s, match.end(), end)
        if more is None:
            return match.end()
        quote = more.end() - 1
