"""The cluster SIGKILLed and restarted while a bot runs: the bot keeps its last valid
credentials (files untouched, /readyz ready while they are valid), renews once the
cluster is back, and is never locked - even when a kill lands mid-renewal."""

from __future__ import annotations

import random
import time

import pytest

from tests.chaos.conftest import pick, serial
from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES = pick(1, 8)
DOWN = pick(2.5, 8.0)  # seconds; longer than the renewal interval (1 s)
TTL = pick("30s", "1m")


def test_cluster_killed_and_restarted_while_the_bot_runs(env: BotEnv):
    port = diag_port()
    out, me = env.root / "out", env.root / "me"
    config = env.config(
        [env.db_service("out"), {"type": "identity", "name": "me", "destination": str(me)}],
        diag_addr=f"127.0.0.1:{port}", credential_ttl=TTL, renewal_interval="1s")
    bot = BotProcess(config, port, faults={"MWIBOT_TEST_CALL_TIMEOUT": "1"}).start()
    rng = random.Random(10)
    try:
        wait_until(lambda: serial(out) and bot.get("/readyz")[0] == 200, 15, "a ready bot")
        for _ in range(CYCLES):
            time.sleep(rng.uniform(0, 1))  # lands anywhere in a renewal, sometimes mid-way
            assert env.cluster.proc is not None
            env.cluster.proc.kill()
            env.cluster.proc.wait()
            time.sleep(1.5)  # a renewal answered just before the kill finishes writing
            kept = (out / "tlscert").read_bytes(), (me / "identity").read_bytes()
            since = time.monotonic()
            while time.monotonic() - since < DOWN:
                assert bot.get("/readyz")[0] == 200 and bot.get("/livez")[0] == 200
                time.sleep(0.1)
            assert ((out / "tlscert").read_bytes(), (me / "identity").read_bytes()) == kept
            assert "cannot reach the cluster" in bot.log_text()
            env.cluster.start()
            wait_until(lambda kept=kept: (out / "tlscert").read_bytes() != kept[0]
                       and (me / "identity").read_bytes() != kept[1], 20,
                       "renewals once the cluster is back")
            wait_until(lambda: bot.readyz().get("status") == "healthy", 10, "healthy again")
    finally:
        assert bot.stop() == 0
    assert env.locks() == [] and env.audit("bot.generation_mismatch") == []
