"""The web UI's budget for web.denied audit events (web/app.py DenialBudget): per remote
address and minute; what is left out is counted and reported on the next one recorded."""

from __future__ import annotations

from mwiproxy.web.app import DenialBudget


def test_refusals_past_the_budget_are_counted_and_reported_next_minute():
    b = DenialBudget(per_minute=3)
    assert [b.take("a", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert b.take("b", 1.0) == 0  # another address has its own budget
    assert b.take("a", 59.9) is None
    assert b.take("a", 60.0) == 3  # a new minute: the first one says 3 were left out
    assert b.take("a", 60.1) == 0


def test_the_addresses_remembered_are_bounded():
    b = DenialBudget(per_minute=1, addresses=100)
    for i in range(1000):
        assert b.take(f"10.0.{i // 256}.{i % 256}", float(i) / 1000) == 0
        assert len(b._windows) <= 100
    assert b.take("late", 100.0) == 0  # expired windows are pruned first
    assert len(b._windows) <= 100
