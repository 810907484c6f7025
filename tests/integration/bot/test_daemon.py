"""The long-running bot against a real cluster: renewal cycles, diagnostics, the cluster
going away and coming back, SIGHUP reloads and on-renew actions."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = pytest.mark.integration

FAST = {"credential_ttl": "10s", "renewal_interval": "2s"}


def cert(dest: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate((dest / "tlscert").read_bytes())
    except (OSError, ValueError):
        return None


def serial(dest: Path) -> int:
    c = cert(dest)
    return c.serial_number if c else 0


def start_bot(env: BotEnv, services: list[dict], **top) -> BotProcess:
    port = diag_port()
    config = env.config(services, diag_addr=f"127.0.0.1:{port}", **{**FAST, **top})
    return BotProcess(config, port).start()


def renewals(dest: Path, count: int, timeout: float) -> list[int]:
    """Wait for `count` distinct certificates in dest; their serials."""
    seen: list[int] = []

    def more() -> bool:
        s = serial(dest)
        if s and s not in seen:
            seen.append(s)
        return len(seen) >= count
    wait_until(more, timeout, f"{count} renewals in {dest}")
    return seen


def test_renews_every_interval_with_diagnostics_and_actions(env: BotEnv):
    marks = env.root / "renewed.txt"
    waiter = subprocess.Popen(["sh", "-c", f"trap 'echo hup >> {env.root}/hup.txt' USR1; "
                               "while :; do sleep 0.05; done"])
    (env.root / "app.pid").write_text(f"{waiter.pid}\n")
    services = [
        env.db_service("out", "tls", reload={"command": ["sh", "-c", f"echo $MWIBOT_SERVICE >> {marks}"]}),
        {"type": "identity", "name": "me", "destination": str(env.root / "me"),
         "reload": {"pid_file": str(env.root / "app.pid"), "signal": "USR1"}},
    ]
    bot = start_bot(env, services)
    try:
        renewals(env.root / "out", 3, 15)
        ready = wait_until(lambda: bot.readyz().get("status") == "healthy" and bot.readyz(), 5)
        assert set(ready["services"]) == {"bot-identity", "out", "me"}
        assert bot.get("/livez")[0] == 200
        assert bot.get("/readyz/out")[0] == 200 and bot.get("/readyz/nope")[0] == 404
        metrics = bot.get("/metrics")[1].decode()
        assert 'tbot_task_iterations_successful{name="out",service="database"}' in metrics
        expiry = [ln for ln in metrics.splitlines()
                  if ln.startswith('mwibot_output_expiry_seconds{output="out"}')]
        assert 0 < float(expiry[0].split()[-1]) <= 10
        assert 'mwibot_output_last_renewal_timestamp_seconds{output="me"}' in metrics
        # the reload command runs after the renewal is written: wait for it, not the file
        wait_until(lambda: marks.exists() and len(marks.read_text().splitlines()) >= 3, 30,
                   "three reload commands")
        assert marks.read_text().splitlines()[:3] == ["out"] * 3
        wait_until(lambda: (env.root / "hup.txt").exists(), 5, "the USR1 action")
        assert env.generation() >= 2
        log = bot.log_text()
        assert "renewed output out (database example-server/example-db as alice)" in log
        assert "bot generation" in log and "expires" in log
    finally:
        assert bot.stop() == 0
        waiter.kill()
        waiter.wait()


def test_cluster_down_keeps_credentials_and_renewal_resumes(env: BotEnv):
    bot = start_bot(env, [env.db_service("out")])
    dest = env.root / "out"
    try:
        renewals(dest, 1, 10)
        env.cluster.stop()
        kept = serial(dest)
        down_since = dt.datetime.now(dt.UTC)
        wait_until(lambda: bot.log_text().count("cannot reach the cluster") >= 2, 10)
        wait_until(lambda: dt.datetime.now(dt.UTC) - down_since > dt.timedelta(seconds=2.5), 5)
        assert serial(dest) == kept  # the last good credentials stay in place
        current = cert(dest)
        assert current is not None and current.not_valid_after_utc > dt.datetime.now(dt.UTC)
        health = bot.readyz("out")
        assert health["status"] == "unhealthy" and "cannot reach" in health["reason"]
        env.cluster.start()
        wait_until(lambda: serial(dest) != kept, 10, "renewal after the cluster returned")
        wait_until(lambda: bot.readyz().get("status") == "healthy", 5)
    finally:
        assert bot.stop() == 0


def test_sighup_reloads_the_config_and_keeps_the_identity(env: BotEnv):
    bot = start_bot(env, [env.db_service("one")])
    try:
        renewals(env.root / "one", 1, 10)
        config = bot.config
        good = config.read_text()
        config.write_text(good + "bogus_key: 1\n")
        bot.signal(signal.SIGHUP)
        wait_until(lambda: "config not reloaded" in bot.log_text(), 5)
        assert "bogus_key" in bot.log_text()
        renewals(env.root / "one", 2, 10)  # still renewing with the old config
        env.config([env.db_service("one"), env.db_service("two", "mongo")],
                   diag_addr=f"127.0.0.1:{bot.diag_port}", **FAST)
        bot.signal(signal.SIGHUP)
        wait_until(lambda: (env.root / "two" / "mongo.crt").exists(), 10, "the new output")
        wait_until(lambda: set(bot.readyz().get("services", {})) == {"bot-identity", "one", "two"}, 5)
        assert len(env.audit("bot.join")) == 1  # reloading never re-joins
        assert bot.proc is not None and bot.proc.poll() is None
    finally:
        assert bot.stop() == 0
