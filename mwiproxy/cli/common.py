"""Shared CLI plumbing: logging set-up, error reporting, tables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import mwiproxy
from mwiproxy.process import logs


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument("--version", action="version",
                        version=f"{prog} {mwiproxy.__version__}", help="print the version")


def add_version_command(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """`PROG version [--format text|json]`: version, Python, native core."""
    p = sub.add_parser("version", help="print the version, the Python version and whether "
                       "the native core is loaded")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text (default) or json: an object")
    return p


def print_version(prog: str, fmt: str = "text") -> int:
    import json
    import platform

    from mwiproxy import _native

    info = {"program": prog, "version": mwiproxy.__version__,
            "python": platform.python_version(), "native": bool(_native.NATIVE)}
    if fmt == "json":
        print(json.dumps(info, sort_keys=True))
    else:
        print(f"{prog} {info['version']}\nPython {info['python']}\n"
              f"native core: {'yes' if info['native'] else 'no (pure-Python build)'}")
    return 0


def add_log_flags(parser: argparse.ArgumentParser, debug_help: str = "debug logging") -> None:
    """`--log-format text|json` (tbot's flag) and `-d/--debug`."""
    parser.add_argument("--log-format", choices=list(logs.FORMATS), default=None,
                        help="the process log: text (default) or json, one object per "
                             "line (as tbot's --log-format)")
    parser.add_argument("-d", "--debug", action="store_true", help=debug_help)


def setup_logging(debug: bool = False, fmt: str | None = "text",
                  level: int = logging.INFO) -> None:
    logs.setup(fmt or "text", logging.DEBUG if debug else level)


def shown(value: Any) -> str:
    """A value for the terminal: as is when printable, else its repr() — a newline or an
    escape sequence in a stored name must not forge or hide a line of output."""
    text = "" if value is None else str(value)
    return text if text.isprintable() else repr(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[shown(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_cli(fn: Callable[[], int]) -> int:
    """Run a command: expected failures print one clear line and exit 1, never a trace."""
    from mwiproxy.auth.errors import AuthError
    from mwiproxy.config.loader import ConfigError

    try:
        return fn()
    except (AuthError, ConfigError, ValueError, OSError) as e:
        msg = e.message if isinstance(e, AuthError) else str(e)
        print(f"ERROR: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
