"""A copied bot identity renewing from a second place: the generation counter catches
it, the cluster locks the bot, both copies stop and say why, and the audit log shows it."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, mwibot, wait_until

pytestmark = pytest.mark.integration


def test_copied_identity_locks_the_bot(env: BotEnv):
    port = diag_port()
    config = env.config([env.db_service("out")], credential_ttl="20s", renewal_interval="2s",
                        diag_addr=f"127.0.0.1:{port}")
    bot = BotProcess(config, port).start()
    try:
        wait_until(lambda: (env.root / "out" / "tlscert").exists(), 10, "the first output")
        shutil.copytree(env.root / "storage", env.root / "stolen", symlinks=True)
        copied = env.generation("stolen")
        wait_until(lambda: env.generation() > copied, 10, "the original to renew")
        thief = env.config([env.db_service("loot")], name="thief.yaml", storage="stolen")
        res = mwibot("start", "-c", str(thief), "--oneshot")
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        error = res.stderr.strip().splitlines()[-1]
        assert error.startswith("ERROR: the cluster locked this bot")
        assert "possibly a stolen certificate" in error
        assert not (env.root / "loot" / "tlscert").exists()

        # the original stops renewing at its next renewal and reports why, diag still up
        def locked() -> bool:
            h = bot.readyz("bot-identity")
            return h.get("status") == "unhealthy" and "locked" in h.get("reason", "")
        wait_until(locked, 10, "the original to see the lock")
        ready = bot.readyz()
        assert ready["status"] == "unhealthy"
        assert all("locked" in s["reason"] for s in ready["services"].values())
        assert bot.get("/livez")[0] == 200
        assert bot.proc is not None and bot.proc.poll() is None
        assert "renewal stopped" in bot.log_text()
        events = env.audit("bot.generation_mismatch")
        assert len(events) == 1 and events[0]["bot"] == "example"
        assert events[0]["presented"] == copied
    finally:
        assert bot.stop() == 0
