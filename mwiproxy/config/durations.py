"""Go-style durations ("1h30m", "500ms") as used in Teleport and tbot YAML files.

A bare number (int, float, or a numeric string) means seconds, because that is what
users write when they leave the unit out. Negative durations are refused: every
duration in our configs is a TTL or an interval, where a negative value is a mistake.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

# Microseconds per unit; Decimal keeps "0.3s" exact. timedelta cannot hold nanoseconds,
# so sub-microsecond remainders round down.
_UNIT_MICROS: dict[str, Decimal] = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),
    "μs": Decimal(1),  # Greek mu, which Go also accepts
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([a-zA-Zµμ]+)")
_NUMBER = re.compile(r"\+?(\d+(?:\.\d*)?|\.\d+)")


def parse_duration(value: str | int | float) -> timedelta:
    """Parse "1h", "20m", "1h30m", "90s", "500ms", "2h45m30s" or a number of seconds."""
    if isinstance(value, bool):  # bool is an int subclass; `ttl: true` is a mistake
        raise ValueError(f"invalid duration {value!r}: expected a duration like 1h30m")
    if isinstance(value, int | float):
        return _from_seconds(float(value), repr(value))
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected a string or a number")
    text = value.strip()
    if not text:
        raise ValueError("invalid duration: empty string (expected e.g. 30s, 20m, 1h)")
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    if _NUMBER.fullmatch(text):
        return _from_seconds(float(text.lstrip("+")), repr(value))
    return _parse_units(text.lstrip("+"), value)


def _from_seconds(seconds: float, shown: str) -> timedelta:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {shown}: must be a finite number")
    if seconds < 0:
        raise ValueError(f"invalid duration {shown}: must not be negative")
    return _checked(lambda: timedelta(seconds=seconds), shown)


def _parse_units(text: str, original: str) -> timedelta:
    micros = Decimal(0)
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {original!r}: expected <number><unit> pairs such as "
                "1h30m (units: h, m, s, ms, us, ns)"
            )
        number, unit = match.groups()
        if unit not in _UNIT_MICROS:
            raise ValueError(
                f"invalid duration {original!r}: unknown unit {unit!r} "
                "(valid units: h, m, s, ms, us, ns)"
            )
        micros += Decimal(number) * _UNIT_MICROS[unit]
        pos = match.end()
    # int() truncates toward zero, dropping nanoseconds timedelta cannot hold
    return _checked(lambda: timedelta(microseconds=int(micros)), repr(original))


def _checked(build: Callable[[], timedelta], shown: str) -> timedelta:
    try:
        return build()
    except OverflowError:
        raise ValueError(f"invalid duration {shown}: too large") from None


def format_duration(td: timedelta) -> str:
    """Compact Go-like form that parse_duration reads back exactly: 1h30m, 1m30s, 500ms."""
    total = _whole_micros(td)
    if total < 0:
        raise ValueError(f"cannot format a negative duration ({td})")
    if total == 0:
        return "0s"
    parts = []
    for unit in ("h", "m", "s", "ms", "us"):
        size = int(_UNIT_MICROS[unit])
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _whole_micros(td: timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
