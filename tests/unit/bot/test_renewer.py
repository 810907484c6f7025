"""The renewer's logic with a fake cluster: scheduling, the stored identity, failures
and backoff, locks, tunnels' in-memory credentials and on-renew actions."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import sys
import time

import pytest

from mwiproxy.auth.client import ClusterUnreachable
from mwiproxy.auth.errors import AccessDenied
from mwiproxy.bot.actions import ActionError, run_reload
from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.keeper import BotStopped
from mwiproxy.bot.renewer import BOT_IDENTITY, Renewer
from mwiproxy.bot.schedule import Backoff, jittered, next_renewal
from mwiproxy.bot.state import BotStateStore
from mwiproxy.bot.tunnels import CredentialsHolder
from mwiproxy.config.bot import ReloadAction
from mwiproxy.metrics.diag import HEALTHY, UNHEALTHY, HealthRegistry
from tests.unit.bot._fakecluster import FakeCluster, keeper_for, make_config

S = dt.timedelta(seconds=1)


# --- scheduling ---------------------------------------------------------------------


def test_jitter_stays_within_ten_percent():
    rng = random.Random(1)
    values = [jittered(100 * S, rng) for _ in range(1000)]
    assert min(values) >= 90 * S and max(values) <= 110 * S
    assert max(values) - min(values) > 15 * S  # it does spread


def test_next_renewal_comes_before_expiry():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert 18 * S <= next_renewal(20 * S, now + 3600 * S, now) <= 22 * S
    assert next_renewal(20 * S, now + 10 * S, now) == 5 * S  # half the remaining life
    assert next_renewal(20 * S, now - S, now) > dt.timedelta(0)  # already expired: soon


def test_backoff_doubles_and_caps_at_the_interval():
    b = Backoff(8 * S, base=S, rng=random.Random(2))
    delays = [b.next().total_seconds() for _ in range(6)]
    assert 0.9 <= delays[0] <= 1.1 and 1.8 <= delays[1] <= 2.2 and 3.6 <= delays[2] <= 4.4
    assert all(d <= 8 for d in delays) and delays[-1] >= 7.2
    b.reset()
    assert b.next() <= 1.1 * S


# --- the stored identity --------------------------------------------------------------


def test_join_once_then_reuse_the_stored_identity(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    first = keeper_for(config, cluster).ensure()
    assert first.generation == 1 and cluster.calls == ["join"]
    again = keeper_for(config, cluster)  # a restart
    assert again.ensure().creds == first.creds and cluster.calls == ["join"]
    assert again.renewed_at is None  # loaded, not renewed: the renewer renews at once
    renewed = again.renew()
    assert renewed.generation == 2
    assert BotStateStore(config.storage_directory).load().generation == 2  # stored first


def test_a_new_token_joins_again_and_an_expired_identity_asks_for_one(tmp_path):
    cluster = FakeCluster()
    keeper_for(make_config(tmp_path), cluster).ensure()
    keeper_for(make_config(tmp_path, token="new"), cluster).ensure()
    assert cluster.calls == ["join", "join"]
    # a join whose certificate is already expired when it is next loaded
    keeper_for(make_config(tmp_path, token="third", credential_ttl="0s"), cluster).ensure()
    with pytest.raises(BotStopped, match="expired at .* a new join token is needed"):
        keeper_for(make_config(tmp_path, token="third"), cluster).ensure()
    assert cluster.calls == ["join"] * 3  # the spent token is not tried again


def test_no_token_and_no_identity_says_what_to_do(tmp_path):
    from mwiproxy.bot.cluster import OnboardingError

    with pytest.raises(OnboardingError, match="set onboarding.token"):
        keeper_for(make_config(tmp_path, token=""), FakeCluster()).ensure()


def test_a_lock_on_renewal_stops_for_good(tmp_path):
    cluster = FakeCluster()
    keeper = keeper_for(make_config(tmp_path), cluster)
    keeper.ensure()
    cluster.generation = 7  # someone else renewed with a copy
    with pytest.raises(BotStopped, match="the cluster locked this bot: .*stolen"):
        keeper.renew()


# --- the loops ------------------------------------------------------------------------


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_outputs_tunnels_and_identity_are_renewed(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    health = HealthRegistry()
    renewer = Renewer(config, keeper_for(config, cluster), health=health)
    seen: list[Credentials] = []
    renewer.tunnels["tun"].on_change(seen.append)

    async def scenario() -> None:
        task = asyncio.ensure_future(renewer.run())
        want = {BOT_IDENTITY: HEALTHY, "out": HEALTHY, "tun": HEALTHY, "me": HEALTHY}

        def statuses() -> dict[str, str]:
            return {n: h.status for n, h in health.snapshot().items()}

        # services report in their own order: wait for all of them, not just the tunnel
        await _until(lambda: len(seen) >= 2 and cluster.generation >= 2 and statuses() == want)
        assert renewer.tunnels["tun"].current() == seen[-1]
        assert statuses() == want
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert (tmp_path / "out" / "tlscert").exists() and (tmp_path / "me" / "identity").exists()
    assert not any((tmp_path / "storage").glob("tun*"))  # tunnels never touch the disk


def test_unreachable_keeps_the_files_and_recovers(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    health = HealthRegistry()
    renewer = Renewer(config, keeper_for(config, cluster), health=health)
    cert = tmp_path / "out" / "tlscert"

    async def scenario() -> None:
        task = asyncio.ensure_future(renewer.run())
        await _until(cert.exists)
        cluster.fail = ClusterUnreachable("cannot reach the cluster at fake:3080")
        await _until(lambda: health.get("out").status == UNHEALTHY)
        kept = cert.read_bytes()
        failures = len(cluster.calls)
        await _until(lambda: len(cluster.calls) >= failures + 3)  # retrying, with backoff
        assert cert.read_bytes() == kept
        assert "cannot reach" in health.get("out").reason
        cluster.fail = None
        await _until(lambda: cert.read_bytes() != kept and health.get("out").status == HEALTHY)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_lock_marks_everything_unhealthy(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    health = HealthRegistry()
    renewer = Renewer(config, keeper_for(config, cluster), health=health)

    async def scenario() -> None:
        task = asyncio.ensure_future(renewer.run())
        await _until(lambda: cluster.generation >= 2)
        cluster.generation = 99
        with pytest.raises(BotStopped):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert {h.status for h in health.snapshot().values()} == {UNHEALTHY}
    assert all("locked" in h.reason for h in health.snapshot().values())


def test_oneshot_refuses_tunnels_and_reports_denials(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    with pytest.raises(ValueError, match="oneshot cannot serve a database-tunnel"):
        asyncio.run(Renewer(config, keeper_for(config, cluster)).run_once())
    config.services = [s for s in config.services if s.type != "database-tunnel"]
    cluster.fail = AccessDenied("access to db denied")
    with pytest.raises(AccessDenied):
        asyncio.run(Renewer(config, keeper_for(config, cluster)).run_once())
    assert cluster.calls == ["join"]  # not retried: a denial is not transient


# --- tunnels' holder and on-renew actions ----------------------------------------------


def test_holder_waits_for_the_first_credentials():
    holder = CredentialsHolder("tun")
    with pytest.raises(LookupError):
        holder.current()
    creds = Credentials(b"key", b"cert")
    calls: list[Credentials] = []
    unsubscribe = holder.on_change(calls.append)
    holder.on_change(lambda c: 1 / 0)  # a broken consumer does not stop renewals

    async def scenario() -> Credentials:
        waiter = asyncio.ensure_future(holder.wait())
        await asyncio.sleep(0)
        holder.update(creds)
        return await waiter

    assert asyncio.run(scenario()) == creds and calls == [creds]
    unsubscribe()
    holder.update(creds)
    assert calls == [creds]


def test_reload_command_gets_the_output_in_its_environment(tmp_path):
    out = tmp_path / "seen"
    action = ReloadAction(command=[sys.executable, "-c",
                                   "import os,sys; open(sys.argv[1],'w').write("
                                   "os.environ['MWIBOT_SERVICE']+' '+os.environ['MWIBOT_DESTINATION'])",
                                   str(out)])
    run_reload(action, service="pg", destination="/opt/x")
    assert out.read_text() == "pg /opt/x"
    with pytest.raises(ActionError, match="exited 3: boom"):
        run_reload(ReloadAction(command=["sh", "-c", "echo boom >&2; exit 3"]),
                   service="pg", destination="/x")
    with pytest.raises(ActionError, match="command not found"):
        run_reload(ReloadAction(command=["/nonexistent/x"]), service="pg", destination="/x")


def test_reload_signal_from_a_pid_file(tmp_path):
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda n, f: got.append(n))
    try:
        pid_file = tmp_path / "app.pid"
        pid_file.write_text(f"{os.getpid()}\n")
        run_reload(ReloadAction(pid_file=str(pid_file), signal="USR2"), service="s",
                   destination="/x")
        assert got == [signal.SIGUSR2]
        pid_file.write_text("nonsense")
        with pytest.raises(ActionError, match="no usable pid"):
            run_reload(ReloadAction(pid_file=str(pid_file)), service="s", destination="/x")
    finally:
        signal.signal(signal.SIGUSR2, previous)


class _StrictCluster(FakeCluster):
    """Refuses a database certificate to a bot identity of an older generation, as the
    real cluster does, and renews slowly, so an issue racing a renewal would be seen."""

    def __init__(self) -> None:
        super().__init__()
        self.stale = 0

    def renew(self, ident, ttl, key_pem):  # type: ignore[no-untyped-def]
        out = super().renew(ident, ttl, key_pem)
        time.sleep(0.15)  # the committed generation is ahead of the bot's for a while
        return out

    def issue_database(self, ident, **kw):  # type: ignore[no-untyped-def]
        if ident.generation != self.generation:
            self.stale += 1
            raise AccessDenied(f"certificate is of generation {ident.generation}")
        return super().issue_database(ident, **kw)


def test_outputs_are_never_issued_with_an_identity_being_renewed(tmp_path):
    """Each output and the bot identity renew on their own timers: an output issued while
    the identity is being replaced would be refused (a false renewal failure, and with
    it the renewals-failing alert). The renewal waits for issues in flight and holds new
    ones back."""
    cluster = _StrictCluster()
    config = make_config(tmp_path)
    failures: list[str] = []

    class Sink:
        def task_iteration(self, service, name, ok, seconds):  # type: ignore[no-untyped-def]
            if not ok:
                failures.append(name)

        def output_renewed(self, output, not_after, at=None):  # type: ignore[no-untyped-def]
            pass

        def renewal(self, result):  # type: ignore[no-untyped-def]
            pass

        def forget_output(self, output):  # type: ignore[no-untyped-def]
            pass

    renewer = Renewer(config, keeper_for(config, cluster), metrics=Sink())
    seen: list[str] = []

    async def scenario() -> None:
        task = asyncio.ensure_future(renewer.run())
        await _until(lambda: cluster.generation >= 5 and cluster.calls.count("issue") >= 10,
                     60)
        seen.extend(failures)  # the cancellation below may cut a renewal: not a failure
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert cluster.stale == 0 and seen == []
