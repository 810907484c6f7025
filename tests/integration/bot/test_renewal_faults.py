"""Renewal that survives faults without weakening theft detection (a real cluster, a real
`mwibot start`): answers lost on the way back through a fault-injecting relay, a storage
directory refusing writes across a restart - neither may lock the bot - while two copies
of one identity renewing still lock it and are audited."""

from __future__ import annotations

import shutil

import pytest

from mwiproxy.bot.state import PENDING_FILE
from tests._testbase.faultrelay import DELAY_REPLY, DROP_REPLY, PASS, RESET_REPLY, FaultRelay
from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = pytest.mark.integration

FAST = {"credential_ttl": "30s", "renewal_interval": "1s"}
CALL_TIMEOUT = "1"  # seconds; the bot's default (15 s) would make each lost answer slow
RESET_AFTER = 2000  # bytes: a renewal's answer (with session tickets) is about 4.4 KB


def start_bot(env: BotEnv, *, name: str = "tbot.yaml", storage: str = "storage",
              faults: dict[str, str] | None = None, **top: str) -> BotProcess:
    port = diag_port()
    services = [{"type": "identity", "name": "me", "destination": str(env.root / f"me-{storage}")}]
    config = env.config(services, name=name, storage=storage, diag_addr=f"127.0.0.1:{port}",
                        **{**FAST, **top})
    return BotProcess(config, port, faults={"MWIBOT_TEST_CALL_TIMEOUT": CALL_TIMEOUT,
                                            **(faults or {})}).start()


def bot_health(bot: BotProcess) -> dict[str, str]:
    return bot.readyz("bot-identity")


def stored(env: BotEnv, storage: str = "storage") -> int:
    """The stored generation, 0 before the first join is stored."""
    try:
        return env.generation(storage)
    except (AssertionError, OSError):
        return 0


def assert_never_locked(env: BotEnv) -> None:
    assert env.locks() == []
    assert env.audit("bot.generation_mismatch") == []


def settled_generation(env: BotEnv, storage: str = "storage") -> int:
    """The stored generation once the bot stopped; the cluster's is the same, or one
    ahead with the key of that renewal still stored for the retry."""
    on_disk, issued = env.generation(storage), env.cluster_generation()
    assert issued == on_disk or (issued == on_disk + 1 and
                                 (env.root / storage / PENDING_FILE).exists())
    return on_disk


@pytest.mark.parametrize("mode", [DROP_REPLY, RESET_REPLY, DELAY_REPLY])
def test_a_lost_renewal_answer_is_asked_again_and_never_locks(env: BotEnv, mode: str):
    with FaultRelay(env.cluster.addr, reset_after=RESET_AFTER, delay=3.0) as relay:
        bot = start_bot(env, proxy_server=relay.addr)
        try:
            wait_until(lambda: stored(env) >= 2, 15, "renewals through the relay")
            relay.set_mode(mode)
            wait_until(lambda: relay.stats.faulted >= 3, 20, "renewals whose answer is lost")
            stuck = env.generation()
            assert env.cluster_generation() == stuck + 1  # committed once, never seen
            health = bot_health(bot)
            assert health["status"] == "unhealthy"
            assert "lost the answer from the cluster" in health["reason"]
            relay.set_mode(PASS)
            wait_until(lambda: stored(env) >= stuck + 2, 15, "renewals after the fault")
            wait_until(lambda: bot_health(bot).get("status") == "healthy", 5)
        finally:
            assert bot.stop() == 0
    assert settled_generation(env) >= stuck + 2
    assert_never_locked(env)
    assert f"renewing generation {stuck} again with the key stored" in bot.log_text()


def test_storage_refusing_writes_across_a_restart_recovers_by_itself(env: BotEnv):
    storage = env.root / "storage"
    control = env.root / "full-disk"
    faults = {"MWIBOT_TEST_FULL_DISK": str(control)}
    expected = f"cannot store the bot identity in {storage} (errno 28, No space left on device)"
    bot = start_bot(env, faults=faults)
    try:
        wait_until(lambda: stored(env) >= 2, 15, "a first renewal")
        # the disk fills after the next key was stored: the cluster runs one ahead
        control.write_text(str(storage / ".bundles"))
        wait_until(lambda: bot_health(bot).get("reason") == expected, 10, "/readyz to say why")
        wait_until(lambda: bot.log_text().count(expected) >= 3, 15, "several renewal attempts")
        assert f"ERROR mwiproxy.bot: bot bot-identity: renewal failed: {expected}" in bot.log_text()
        # the stored identity is still valid: serving, with the renewal failing
        assert bot.readyz()["status"] == "degraded" and bot.get("/readyz")[0] == 200
    finally:
        assert bot.stop() == 0
    stuck = env.generation()
    assert env.cluster_generation() == stuck + 1 and (storage / PENDING_FILE).exists()

    control.write_text(str(storage))  # now nothing at all can be written there
    bot = start_bot(env, faults=faults)
    try:
        wait_until(lambda: bot_health(bot).get("reason") == expected, 15, "the same after a restart")
        wait_until(lambda: bot.log_text().count(expected) >= 2, 15, "retries after the restart")
        assert env.generation() == stuck and env.cluster_generation() == stuck + 1
        assert env.locks() == []
        control.unlink()  # the disk has room again
        wait_until(lambda: stored(env) >= stuck + 2, 15, "renewals once storage works")
        wait_until(lambda: bot.readyz().get("status") == "healthy", 5)
    finally:
        assert bot.stop() == 0
    assert settled_generation(env) >= stuck + 2
    assert_never_locked(env)


def test_two_copies_of_one_identity_renewing_are_both_locked(env: BotEnv):
    first = start_bot(env)
    try:
        wait_until(lambda: stored(env) >= 2, 15, "a first renewal")
    finally:
        assert first.stop() == 0
    shutil.copytree(env.root / "storage", env.root / "copy", symlinks=True)
    copied = env.generation("copy")
    original = start_bot(env)
    copy = start_bot(env, name="copy.yaml", storage="copy")
    try:
        def locked(bot: BotProcess) -> bool:
            health = bot_health(bot)
            return health.get("status") == "unhealthy" and "locked" in health.get("reason", "")
        wait_until(lambda: locked(original) and locked(copy), 20, "both copies to be locked")
        for bot in (original, copy):
            assert bot.proc is not None and bot.proc.poll() is None  # diagnostics stay up
            assert "renewal stopped" in bot.log_text()
    finally:
        assert original.stop() == 0 and copy.stop() == 0
    assert [lock["target"] for lock in env.locks()] == ["example"]
    events = env.audit("bot.generation_mismatch")
    assert len(events) == 1 and events[0]["bot"] == "example"
    assert events[0]["presented"] == copied and events[0]["expected"] == copied + 1
