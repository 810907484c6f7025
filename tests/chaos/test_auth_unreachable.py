"""The auth API unreachable for longer than a renewal interval (a relay that swallows
every answer: connections open, requests arrive, nothing comes back): outputs keep
serving their last credentials, and the bot recovers by itself once answers flow again
- without a lock, although the cluster may have committed renewals whose answers the
bot never got."""

from __future__ import annotations

import time

import pytest

from tests._testbase.faultrelay import DROP_REPLY, PASS, FaultRelay
from tests.chaos.conftest import pick, serial
from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES = pick(1, 5)
AWAY = pick(3.0, 20.0)  # seconds; the renewal interval is 1 s


def test_auth_unreachable_for_longer_than_a_renewal_interval(env: BotEnv):
    port = diag_port()
    out = env.root / "out"
    with FaultRelay(env.cluster.addr) as relay:
        config = env.config([env.db_service("out")], diag_addr=f"127.0.0.1:{port}",
                            proxy_server=relay.addr, credential_ttl="1m",
                            renewal_interval="1s")
        bot = BotProcess(config, port, faults={"MWIBOT_TEST_CALL_TIMEOUT": "1"}).start()
        try:
            wait_until(lambda: serial(out) and bot.get("/readyz")[0] == 200, 15, "a ready bot")
            for _ in range(CYCLES):
                relay.set_mode(DROP_REPLY)
                time.sleep(1.5)  # a renewal under way as the answers stopped completes
                kept = (out / "tlscert").read_bytes()
                since = time.monotonic()
                while time.monotonic() - since < AWAY:
                    assert bot.get("/readyz")[0] == 200 and bot.get("/livez")[0] == 200
                    time.sleep(0.1)
                assert (out / "tlscert").read_bytes() == kept
                assert relay.stats.faulted >= 2  # it kept trying
                assert bot.readyz("out")["status"] == "unhealthy"
                relay.set_mode(PASS)
                wait_until(lambda k=kept: (out / "tlscert").read_bytes() != k, 15,
                           "a renewal once the cluster answers")
                wait_until(lambda: bot.readyz().get("status") == "healthy", 10, "healthy again")
        finally:
            assert bot.stop() == 0
    assert env.locks() == [] and env.audit("bot.generation_mismatch") == []
