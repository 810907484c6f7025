"""Shared CLI plumbing: logging set-up, error reporting, tables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import mwiproxy


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument("--version", action="version",
                        version=f"{prog} {mwiproxy.__version__}")


def setup_logging(debug: bool = False, fmt: str = "text") -> None:
    level = logging.DEBUG if debug else logging.INFO
    if fmt == "json":
        import json

        class JSONFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                                   "logger": record.name, "msg": record.getMessage()})

        handler = logging.StreamHandler()
        handler.setFormatter(JSONFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
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
