"""Rotating: a certificate-bearing value re-issued at a fraction of its life, on the
event loop's clock, keeping the current one when a renewal fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

import pytest

from mwiproxy.identity import rotation
from mwiproxy.identity.authorities import create_authority, generate_private_key
from mwiproxy.identity.rotation import Issued, Rotating, renewal_due

LIFE = dt.timedelta(milliseconds=600)


def issuer(life: dt.timedelta = LIFE, fail: Callable[[int], bool] = lambda _n: False
           ) -> tuple[Callable[[], Issued[int]], list[int]]:
    """Issues 1, 2, 3…, each living `life`; `fail(n)` makes the nth attempt raise."""
    attempts: list[int] = []

    def issue() -> Issued[int]:
        attempts.append(len(attempts) + 1)
        if fail(len(attempts)):
            raise OSError(f"attempt {len(attempts)}: the disk is full")
        n = len(attempts)
        return Issued(n, n, dt.datetime.now(dt.UTC) + life)
    return issue, attempts


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_renewal_is_due_at_the_fraction_of_life_since_issue() -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert renewal_due(t0, t0 + dt.timedelta(hours=30 * 24), 0.5) == t0 + dt.timedelta(days=15)
    assert renewal_due(t0, t0 + dt.timedelta(seconds=9), 2 / 3) == t0 + dt.timedelta(seconds=6)


@pytest.mark.parametrize("renew_at", [0, 1, 1.5, -0.1])
def test_renew_at_must_be_a_fraction(renew_at: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Rotating("x", issuer()[0], renew_at=renew_at)


def test_values_are_replaced_before_they_expire_and_handed_to_on_renew() -> None:
    issue, _ = issuer()
    seen: list[int] = []

    async def run() -> list[tuple[int, bool]]:
        r = Rotating("test certificate", issue, renew_at=0.5, on_renew=seen.append)
        r.start()
        checks = []
        try:
            while r.renewals < 3:  # each value handed out is still valid when read
                checks.append((r.current, dt.datetime.now(dt.UTC) < r.not_after))
                await asyncio.sleep(0.05)
        finally:
            await r.close()
        return checks

    checks = asyncio.run(run())
    assert seen == [2, 3, 4]
    assert {v for v, _ in checks} >= {1, 2, 3}
    assert all(valid for _, valid in checks)


def test_a_failed_renewal_keeps_the_current_value_and_retries(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(rotation, "RETRY_MIN", 0.05)
    issue, attempts = issuer(fail=lambda n: n in (2, 3))

    async def run() -> list[int]:
        r = Rotating("test certificate", issue, renew_at=0.5)
        r.start()
        held = []
        try:
            await until(lambda: len(attempts) >= 2)
            held.append(r.current)  # the renewal failed: still the first
            await until(lambda: r.renewals >= 1)
            held.append(r.current)
        finally:
            await r.close()
        return held

    with caplog.at_level(logging.WARNING, logger="mwiproxy.rotation"):
        assert asyncio.run(run()) == [1, 4]
    failures = [r.getMessage() for r in caplog.records if "could not renew" in r.getMessage()]
    assert len(failures) == 2, failures
    assert "test certificate" in failures[0] and "the disk is full" in failures[0]


def test_a_certificate_that_expired_on_issue_counts_as_a_failure(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A CA near its end caps leaves at its own notAfter: renewing must not spin."""
    monkeypatch.setattr(rotation, "RETRY_MIN", 0.05)
    good, _ = issuer()
    calls: list[int] = []

    def issue() -> Issued[int]:
        calls.append(1)
        if len(calls) == 1:
            return good()
        return Issued(9, 9, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))

    async def run() -> int:
        r = Rotating("test certificate", issue, renew_at=0.5)
        r.start()
        try:
            await until(lambda: len(calls) >= 3)
            return r.current
        finally:
            await r.close()

    with caplog.at_level(logging.WARNING, logger="mwiproxy.rotation"):
        assert asyncio.run(run()) == 1
    assert any("expired on issue" in r.getMessage() for r in caplog.records)


def test_real_certificates_get_new_serials() -> None:
    ca = create_authority("host", "example.local")

    def issue() -> Issued[bytes]:
        cert = ca.sign_server("localhost", ["localhost"], generate_private_key().public_key(),
                              dt.timedelta(seconds=1))
        return Issued(cert.serial_number.to_bytes(20), cert.serial_number,
                      cert.not_valid_after_utc)

    async def run() -> set[int]:
        r = Rotating("server certificate", issue, renew_at=0.5)
        r.start()
        serials = {r.serial}
        try:
            await until(lambda: r.renewals >= 2)
            serials.add(r.serial)
        finally:
            await r.close()
        return serials

    assert len(asyncio.run(run())) == 2
