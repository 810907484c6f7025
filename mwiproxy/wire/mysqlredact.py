"""Redaction of a recorded MySQL statement: passwords of CREATE/ALTER USER, GRANT ...
IDENTIFIED BY, SET PASSWORD, PASSWORD('...').

`redact_statement` reads the statement with a small MySQL lexer ('...' and "..."
strings with doubled quotes and backslash escapes, `backtick` names, `#`, `-- ` and
`/* */` comments, `;` between statements) and, in a statement where the word
IDENTIFIED or PASSWORD appears outside strings, names and comments, masks every string
literal after that word (`IDENTIFIED BY 'x'`, `IDENTIFIED WITH p AS 'hash'`, MariaDB's
`IDENTIFIED VIA p USING 'x'`, `SET PASSWORD FOR u = PASSWORD('x')`, `= 'x'`). It masks
more than the password rather than less (`WHERE password = 'x'` is masked too).

A literal is masked as far as the longer of its two readings (backslash escapes on, or
NO_BACKSLASH_ESCAPES), and to the end of the input when the recorded prefix cuts it.
Not seen: a password in a string that is itself SQL (PREPARE s FROM '...'), built by
concatenation, or in a hex / X'' literal. It never raises and runs in linear time.
"""

from __future__ import annotations

import re

MASK = "'****'"
# the next token that matters
_NEXT = re.compile(r"""['"`#;]|--[ \t\r\n]|/\*|\b(?:identified|password)\b""", re.I)
_SQ_ESC = re.compile(r"'(?:[^'\\]|\\.|'')*(?:'|\Z)", re.S)
_SQ_STD = re.compile(r"'(?:[^']|'')*(?:'|\Z)", re.S)
_DQ_ESC = re.compile(r'"(?:[^"\\]|\\.|"")*(?:"|\Z)', re.S)
_DQ_STD = re.compile(r'"(?:[^"]|"")*(?:"|\Z)', re.S)
_BACKTICK = re.compile(r"`(?:[^`]|``)*(?:`|\Z)", re.S)


def _literal_end(s: str, pos: int) -> int:
    """Where the string at pos ends: the later of its two readings."""
    esc, std = (_SQ_ESC, _SQ_STD) if s[pos] == "'" else (_DQ_ESC, _DQ_STD)
    a, b = esc.match(s, pos), std.match(s, pos)
    return max(a.end() if a else len(s), b.end() if b else len(s))


def redact_statement(sql: str) -> tuple[str, bool]:
    """(the statement with its passwords masked, whether anything was)."""
    out: list[str] = []
    last = pos = 0
    masking = False
    while True:
        m = _NEXT.search(sql, pos)
        if m is None:
            break
        tok, start = m.group(0), m.start()
        if tok in ("'", '"'):
            end = _literal_end(sql, start)
            if masking:
                out += [sql[last:start], MASK]
                last = end
            pos = end
        elif tok == "`":
            b = _BACKTICK.match(sql, start)
            pos = b.end() if b else len(sql)
        elif tok == "#" or tok.startswith("--"):
            nl = sql.find("\n", start)
            pos = len(sql) if nl < 0 else nl + 1
        elif tok == "/*":
            close = sql.find("*/", start + 2)
            pos = len(sql) if close < 0 else close + 2
        elif tok == ";":
            masking = False
            pos = m.end()
        else:
            masking = True
            pos = m.end()
    if not out:
        return sql, False
    out.append(sql[last:])
    return "".join(out), True
