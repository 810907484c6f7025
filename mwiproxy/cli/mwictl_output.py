"""How `mwictl` prints what it read: `--format text|json|yaml`.

JSON and YAML are for programs, and their shape is stable (README, "mwictl output"):
the auth API's answer with every time as an RFC 3339 UTC string (`null` for never) and
lists as lists. JSON is one indented document (`audit`: one object per line, so a long
log streams); YAML is one document holding the same value (`get` keeps one document
per resource, what `mwictl create -f` reads back).
"""

from __future__ import annotations

import json
from typing import Any

from mwiproxy.cli.common import shown
from mwiproxy.process.logs import rfc3339, with_rfc3339_times

FORMATS = ["text", "json", "yaml"]
FORMAT_HELP = "text (default): for people; json or yaml: for programs (README: mwictl output)"


def add_format(parser: Any, default: str = "text", help: str = FORMAT_HELP) -> None:
    parser.add_argument("--format", choices=FORMATS, default=default, help=help)


def machine(value: Any, key: str = "") -> Any:
    """The answer as programs get it: times as RFC 3339, containers walked."""
    return with_rfc3339_times(value, key)


def dump(value: Any, fmt: str) -> None:
    """Print one answer as JSON or YAML (one document)."""
    value = machine(value)
    if fmt == "json":
        print(json.dumps(value, indent=2, sort_keys=True))
    else:
        import yaml  # late: `mwictl --help` stays fast

        print(yaml.safe_dump(value, sort_keys=True, default_flow_style=False).rstrip())


def dump_lines(values: list[Any], fmt: str) -> None:
    """A log (audit events): JSON one object per line, YAML one list."""
    if fmt == "json":
        for v in values:
            print(json.dumps(machine(v), sort_keys=True))
    else:
        dump(values, "yaml")


def plain(value: Any) -> str:
    """A field's value for a line of text: lists comma-separated, objects as compact
    JSON, strings shown safely (no forged lines)."""
    if isinstance(value, list | tuple):
        return ",".join(plain(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(machine(value), separators=(",", ":"), sort_keys=True)
    return shown(value)


def event_line(event: dict[str, Any]) -> str:
    """One audit event as text: `TIME  TYPE  key=value ...` (times RFC 3339)."""
    rest = " ".join(f"{k}={plain(machine(v, k))}" for k, v in event.items()
                    if k not in ("id", "time", "type"))
    return f"{rfc3339(event['time'])}  {event['type']:<24} {rest}".rstrip()
