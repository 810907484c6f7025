from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mwiproxy.config.durations import format_duration, parse_duration

GOOD = [
    ("1h", timedelta(hours=1)),
    ("20m", timedelta(minutes=20)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("90s", timedelta(seconds=90)),
    ("500ms", timedelta(milliseconds=500)),
    ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
    ("1.5h", timedelta(minutes=90)),
    ("0.3s", timedelta(milliseconds=300)),
    ("300us", timedelta(microseconds=300)),
    ("300µs", timedelta(microseconds=300)),
    ("1500ns", timedelta(microseconds=1)),
    ("0", timedelta(0)),
    ("0s", timedelta(0)),
    ("90", timedelta(seconds=90)),
    (" 1m ", timedelta(minutes=1)),
    (90, timedelta(seconds=90)),
    (1.5, timedelta(seconds=1.5)),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[repr(t) for t, _ in GOOD])
def test_parse_good(text: str | int | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


BAD = [
    ("", "empty"),
    ("   ", "empty"),
    ("-1h", "negative"),
    (-5, "negative"),
    ("1d", "unknown unit 'd'"),
    ("1x", "unknown unit"),
    ("h", "expected <number><unit>"),
    ("1h x", "expected <number><unit>"),
    ("1.2.3s", "expected <number><unit>"),
    ("abc", "expected <number><unit>"),
    (True, "expected a duration"),
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    ("9999999999999h", "too large"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[repr(t) for t, _ in BAD])
def test_parse_bad(text: str | int | float, message: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert message in str(info.value)


FORMATS = [
    (timedelta(0), "0s"),
    (timedelta(hours=1), "1h"),
    (timedelta(hours=1, minutes=30), "1h30m"),
    (timedelta(seconds=90), "1m30s"),
    (timedelta(milliseconds=500), "500ms"),
    (timedelta(days=2), "48h"),
    (timedelta(seconds=1, microseconds=5), "1s5us"),
]


@pytest.mark.parametrize(("td", "text"), FORMATS, ids=[t for _, t in FORMATS])
def test_format(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_format_negative_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000)))
def test_format_round_trips(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td
