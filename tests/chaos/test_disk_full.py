"""The output disk full (ENOSPC from every write under the output directory, as root
too - tests/integration/bot/faultybot.py): the old credentials stay in place and stay
served, the error names the path, no temporary directory is left behind; renewal
resumes once there is room again."""

from __future__ import annotations

import time

import pytest

from mwiproxy.identity.bundle import BUNDLES_DIR
from tests.chaos.conftest import pick, serial
from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES = pick(1, 5)
FULL = pick(2.0, 15.0)  # seconds with the disk full; the renewal interval is 1 s


def leftovers(bundles_dir) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in bundles_dir.iterdir() if not p.name.isdigit()
                  and p.name not in ("current", ".lock"))


def test_output_disk_full_keeps_the_old_credentials(env: BotEnv):
    port = diag_port()
    out = env.root / "out"
    control = env.root / "full-disk"
    config = env.config([env.db_service("out")], diag_addr=f"127.0.0.1:{port}",
                        credential_ttl="1m", renewal_interval="1s")
    bot = BotProcess(config, port, faults={"MWIBOT_TEST_FULL_DISK": str(control)}).start()
    try:
        wait_until(lambda: serial(out) and bot.get("/readyz")[0] == 200, 15, "a ready bot")
        for _ in range(CYCLES):
            control.write_text(str(out))
            time.sleep(1.2)  # a renewal that was writing as the disk filled completes
            kept = (out / "tlscert").read_bytes(), (out / "key").read_bytes()
            failures = bot.log_text().count("No space left on device")
            wait_until(lambda f=failures: bot.log_text().count("No space left on device")
                       >= f + 2, 10, "renewals failing on the full disk")
            since = time.monotonic()
            while time.monotonic() - since < FULL:
                assert bot.get("/readyz")[0] == 200  # the old credentials are valid
                time.sleep(0.2)
            assert ((out / "tlscert").read_bytes(), (out / "key").read_bytes()) == kept
            health = bot.readyz("out")
            assert health["status"] == "unhealthy" and str(out) in health["reason"], health
            assert str(out) in bot.log_text().rsplit("No space left on device", 1)[0][-400:]
            assert leftovers(out / BUNDLES_DIR) == []
            control.unlink()
            wait_until(lambda k=kept: (out / "tlscert").read_bytes() != k[0], 10,
                       "a renewal once there is room")
            wait_until(lambda: bot.readyz().get("status") == "healthy", 10, "healthy again")
        assert leftovers(out / BUNDLES_DIR) == []
    finally:
        assert bot.stop() == 0
