"""Many PostgreSQL sessions held through tunnel mode (bench/sessions40k.py, issue 15
point 5): client processes on their own loopback addresses → local proxies → cluster
processes on one PostgreSQL storage → PgBouncer (certificate auth, so_reuseport) →
PostgreSQL. Every session starts, queries, stays alive while held (a query every few
seconds); none fails, and the proxies' fds and memory stay flat over the hold.

CI runs a short hold (MWIPROXY_SESSIONS sessions, 1,500 by default, for
MWIPROXY_SESSIONS_HOLD seconds, 20 by default). The long run (40,000 sessions for ten
minutes, recorded in bench/RESULTS.md) is the bench itself:
`python -m bench.sessions40k --sessions 40000 --hold 600`.
"""

from __future__ import annotations

import os

import pytest

from bench import sessions40k
from mwiproxy.devkit import pgbouncer, postgres

pytestmark = [pytest.mark.integration, pytest.mark.long]
SESSIONS = int(os.environ.get("MWIPROXY_SESSIONS", "1500"))
HOLD = float(os.environ.get("MWIPROXY_SESSIONS_HOLD", "20"))


def test_sessions_are_held_through_every_hop_with_flat_fds_and_memory() -> None:
    if not (postgres.available() and pgbouncer.available()):
        pytest.skip("PostgreSQL 15 and pgbouncer needed (scripts/install-deps)")
    per_proxy = max(1, (SESSIONS + 1) // 2)  # two cluster processes, two local proxies
    outcome, stats = sessions40k.run(SESSIONS, HOLD, period=5, per_proxy=per_proxy,
                                     per_client=max(1, (per_proxy + 1) // 2), bouncers=2)
    print(sessions40k.report(outcome, stats, SESSIONS, HOLD, "tests/e2e/test_sessions_held"))
    assert (outcome.held, outcome.errors, outcome.lost) == (SESSIONS, 0, 0), outcome
    assert outcome.queries >= SESSIONS  # every session answered while held
    assert stats.count == {"cluster process": 2, "local proxy (tunnel)": 2, "pgbouncer": 2}
    for kind, (rss0, rss1, fd0, fd1) in sessions40k.flatness(stats).items():
        # two descriptors per relayed session in each proxy, one in PgBouncer
        least = SESSIONS if kind == "pgbouncer" else 2 * SESSIONS
        assert fd0 >= least, (kind, fd0)
        assert abs(fd1 - fd0) <= 50, (kind, fd0, fd1)  # storage pools may open one or two
        assert rss1 <= rss0 * 1.25 + 32 * 1024, (kind, rss0, rss1)  # KiB; wide bound
