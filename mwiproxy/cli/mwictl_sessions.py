"""`mwictl sessions show ID`: one database session as the audit log tells it — its start,
its statements in order (time, duration, rows, bytes, SQLSTATE, query) and its end.

It reads the auth API's `audit` method filtered by the session's id (the `session` field
of every db.session.* event, proxy/sessions.py Session.audit_id); `mwictl audit
--session ID` prints the same events one per line.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mwiproxy.cli import mwictl_output as out
from mwiproxy.cli.common import shown, table
from mwiproxy.process.logs import rfc3339

if TYPE_CHECKING:  # mwictl.py imports this module for its parser: keep --help fast
    from mwiproxy.auth.client import AuthClient

SESSION_START = "db.session.start"  # auth/audit.py's names, without importing the service
SESSION_END = "db.session.end"
STATEMENT_TYPES = ("db.session.query", "db.session.query.failed")
DEFAULT_LIMIT = 10000
QUERY_SHOWN = 500  # characters of a query in the text table (json/yaml: all of it)
_STATEMENT_KEYS = ("query", "rows", "bytes", "duration_ms", "sqlstate")
_NOT_SHOWN_AGAIN = {"id", "time", "type", "session", "session_id", "user", "bot", "db_service",
                    "db_user", "db_name", "remote", "protocol"}


def add_parser(sub: Any) -> None:
    """`mwictl sessions show ID`."""
    sessions = sub.add_parser("sessions", help="show a database session from the audit log")
    verbs = sessions.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    show = verbs.add_parser("show", help="a session's start, statements and end")
    show.add_argument("id", help="the session id (the `session` field of its events)")
    show.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                      help=f"at most this many of its newest events (default {DEFAULT_LIMIT})")
    out.add_format(show)


def session_events(c: AuthClient, session: str, limit: int) -> list[dict[str, Any]]:
    return c.audit_events(limit, session=session.strip().lower())


def cmd_sessions(c: AuthClient, a: argparse.Namespace) -> int:
    events = session_events(c, a.id, a.limit)
    if not events:
        raise ValueError(f"no audit events for session {a.id!r} (the id is the `session` "
                         "field of its db.session.* events: mwictl audit --type "
                         "db.session.start)")
    shape = summarize(a.id.strip().lower(), events)
    if a.format != "text":
        out.dump(shape, a.format)
        return 0
    for line in text_lines(shape, cut_short=len(events) >= a.limit):
        print(line)
    return 0


def commands_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A Redis query event (one per batch of commands: `commands`, `count`) as one dict
    per command, with the event's other fields; any other event as it is."""
    commands = event.get("commands")
    if not isinstance(commands, list):
        return [event]
    rest = {k: v for k, v in event.items() if k not in ("commands", "count")}
    return [{**rest, **c} for c in commands if isinstance(c, dict)]


def summarize(session: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine form: start, statements (a Redis event's commands one each), the
    session's other events, end."""
    start = next((e for e in events if e["type"] == SESSION_START), None)
    end = next((e for e in reversed(events) if e["type"] == SESSION_END), None)
    middle = [e for e in events if e is not start and e is not end]
    return {"session": session, "start": start, "end": end,
            "statements": [c for e in middle if e["type"] in STATEMENT_TYPES
                           for c in commands_of(e)],
            "other_events": [e for e in middle if e["type"] not in STATEMENT_TYPES]}


def text_lines(shape: dict[str, Any], cut_short: bool = False) -> list[str]:
    start, end = shape["start"], shape["end"]
    middle = sorted(shape["statements"] + shape["other_events"], key=lambda e: e["id"])
    first = start or (middle[0] if middle else end)
    lines = [f"Session {shape['session']}  {_who(first)}"]
    if start is None:
        lines.append("Started  (not in the events read" +
                     (": older than --limit)" if cut_short else ")"))
    else:
        lines.append(_start_line(start))
    if middle:
        rows = [_row(e) for e in middle]
        lines.extend("  " + ln for ln in
                     table(["TIME", "DURATION", "ROWS", "BYTES", "SQLSTATE", "STATEMENT"],
                           rows).splitlines())
    else:
        lines.append("  (no statements recorded)")
    lines.append(_end_line(end))
    return lines


def _who(e: dict[str, Any]) -> str:
    user = shown(e.get("user", ""))
    if e.get("bot"):
        user = f"bot {shown(e['bot'])} ({user})"
    return (f"{user} as {shown(e.get('db_user', ''))}@{shown(e.get('db_name', ''))} on "
            f"{shown(e.get('db_service', ''))} ({shown(e.get('protocol', ''))})")


def _start_line(e: dict[str, Any]) -> str:
    verdict = "Started " if e.get("success", True) else "Refused "
    roles = out.plain(e.get("roles", [])) or "-"
    error = f", error: {shown(e['error'])}" if e.get("error") else ""
    remote = shown(e.get("remote", ""))
    return f"{verdict} {rfc3339(e['time'])}  from {remote}, roles {roles}{error}"


def _end_line(e: dict[str, Any] | None) -> str:
    if e is None:
        return "Ended    (no db.session.end yet: open, or the proxy stopped without one)"
    return (f"Ended    {rfc3339(e['time'])}  {shown(e.get('reason', ''))} after "
            f"{e.get('duration', 0)} s: {e.get('bytes_client_to_db', 0)} bytes to the database, "
            f"{e.get('bytes_db_to_client', 0)} from it")


def _row(e: dict[str, Any]) -> list[str]:
    when = rfc3339(e["time"])
    if e["type"] not in STATEMENT_TYPES:
        rest = " ".join(f"{k}={out.plain(out.machine(v, k))}" for k, v in e.items()
                        if k not in _NOT_SHOWN_AGAIN)
        return [when, "", "", "", "", f"[{e['type']}] {rest}".rstrip()]
    query = str(e.get("query", ""))
    shown_query = query[:QUERY_SHOWN] + ("…" if len(query) > QUERY_SHOWN else "")
    if e.get("truncated"):
        shown_query += f" …(recorded {len(query)} of {e.get('query_len', '?')} chars)"
    duration = e.get("duration_ms")
    return [when, "" if duration is None else f"{duration} ms", _count(e.get("rows")),
            _count(e.get("bytes")), str(e.get("sqlstate") or ""), shown_query]


def _count(value: Any) -> str:
    return "" if value is None else str(value)
