"""The process log of every command: one place builds its formatters.

Two formats, chosen by `--log-format` (or `log.format` in cluster.yaml):

- `text`: `2026-12-01T23:35:04.396Z INFO mwiproxy.proxy: message key=value …`
- `json`: one object per line, `{"time": "2026-12-01T23:35:04.396Z", "level": "INFO",
  "logger": "mwiproxy.proxy", "msg": "message", …}`.

Times are RFC 3339 in UTC. What a caller passes as `extra={...}` is not folded into the
message: it goes to the top level of the JSON object (a dict stays an object, e.g. an
audit event: `{"msg": "audit", "event": {...}}`), and after the text message as
`key=value`. An exception's traceback is the `exception` field (JSON) or the lines
after the message (text).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

Format = Literal["text", "json"]
FORMATS: tuple[str, ...] = ("text", "json")

# the attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


_HANDLER = "mwiproxy.process.logs"


def rfc3339(ts: float) -> str:
    """`2026-12-01T23:35:04.396Z`: UTC, milliseconds."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# the keys whose numbers are Unix times (audit events, the auth API's answers)
TIME_KEYS = frozenset({"time", "expires", "created", "last_seen", "last_heartbeat",
                       "token_expires", "last_rotated", "not_after", "not_before"})
# dicts whose values are all times (a CA rotation's schedule: phase → when)
TIME_MAPS = frozenset({"schedule"})


def _time(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return rfc3339(value) if value > 0 else None  # 0: never (a bot not seen yet)


# containers nested deeper than this (or a cycle) are shown as their str()
MAX_DEPTH = 32


def with_rfc3339_times(value: Any, key: str = "", depth: int = 0) -> Any:
    """`value` with the numbers under TIME_KEYS as RFC 3339 strings (containers walked):
    what programs read, in the JSON log and in `mwictl --format json|yaml`."""
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return str(value)
    if isinstance(value, dict):
        if key in TIME_MAPS:
            return {str(k): _time(v) for k, v in value.items()}
        return {str(k): with_rfc3339_times(v, str(k), depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [with_rfc3339_times(v, "", depth + 1) for v in value]
    return _time(value) if key in TIME_KEYS else value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed with `extra=`, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _plain(value: Any, depth: int = 0) -> Any:
    """A value JSON can carry as it is: containers kept, anything else as str()."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth >= MAX_DEPTH:  # a cycle, or absurd nesting: never a RecursionError
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    return str(value)


def _encode(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        for key, value in extra_fields(record).items():
            line.setdefault(key, _plain(value))  # the four above are never overwritten
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, separators=(",", ":"))


def _text_value(value: Any) -> str:
    """A plain word as is; anything else (spaces, quotes, newlines, containers) as JSON,
    so a value can never forge a line or another key."""
    if isinstance(value, str) and value and value.isprintable() and not any(
            c in value for c in ' "='):
        return value
    return _encode(value)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = (f"{rfc3339(record.created)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        extra = extra_fields(record)
        if extra:
            text += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use text or json")
    return JSONFormatter() if fmt == "json" else TextFormatter()


def setup(fmt: str = "text", level: str | int = logging.INFO) -> None:
    """The root logger writes to stderr in `fmt` at `level`; set once per process (a
    SIGHUP changes only the level: `set_level`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)  # a second call replaces ours, leaves others (pytest's)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str | int) -> None:
    logging.getLogger().setLevel(level.upper() if isinstance(level, str) else level)
