"""The renewer's logic with a fake cluster: scheduling, the stored identity, failures
and backoff, locks, tunnels' in-memory credentials and on-renew actions."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from mwiproxy.auth.client import ClusterUnreachable
from mwiproxy.auth.errors import AccessDenied, Locked
from mwiproxy.bot.actions import ActionError, run_reload
from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.diag import HEALTHY, UNHEALTHY, HealthRegistry
from mwiproxy.bot.keeper import BotStopped, IdentityKeeper
from mwiproxy.bot.renewer import BOT_IDENTITY, Renewer
from mwiproxy.bot.schedule import Backoff, jittered, next_renewal
from mwiproxy.bot.state import BotIdentity, BotStateStore, token_hash
from mwiproxy.bot.tunnels import CredentialsHolder
from mwiproxy.config.bot import BotConfig, ReloadAction, parse_bot_config
from mwiproxy.config.loader import load_yaml_documents
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import cert_pem, create_authority, load_public_key
from mwiproxy.identity.certs import DatabaseRoute, Identity

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


# --- a fake cluster -------------------------------------------------------------------


class FakeCluster:
    """Signs real certificates like the auth service; errors can be injected."""

    addr = "fake:3080"

    def __init__(self) -> None:
        self.user_ca = create_authority("user", "test.local")
        self.host_ca = create_authority("host", "test.local")
        self.db_ca = create_authority("db", "test.local")
        self.generation = 0
        self.fail: Exception | None = None
        self.calls: list[str] = []

    def _sign(self, ident: Identity, public: bytes, ttl: dt.timedelta) -> dict[str, Any]:
        cert = self.user_ca.sign_identity(ident, load_public_key(public), ttl)
        return {"cert": cert_pem(cert).decode(), "cas": {
            "host": self.host_ca.cert_pem.decode(), "user": self.user_ca.cert_pem.decode(),
            "db": self.db_ca.cert_pem.decode()}}

    def _bot(self, key: bytes, public: bytes, ttl: dt.timedelta, token: str) -> BotIdentity:
        from mwiproxy.bot.cluster import credentials_from

        ident = Identity(user="bot-x", roles=("bot-x",), usage=(oids.USAGE_BOT,), bot_name="x",
                         generation=self.generation, renewable=True)
        return BotIdentity(credentials_from(key, self._sign(ident, public, ttl)), token)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    def join(self, config: BotConfig, ttl: dt.timedelta) -> BotIdentity:
        from mwiproxy.bot.credentials import generate_key

        self._call("join")
        self.generation = 1
        key, public = generate_key()
        return self._bot(key, public, ttl, token_hash(config.onboarding.resolve_token()))

    def renew(self, ident: BotIdentity, ttl: dt.timedelta) -> BotIdentity:
        from mwiproxy.bot.credentials import generate_key

        self._call("renew")
        if ident.generation != self.generation:
            raise Locked("renewal refused and bot locked: possibly a stolen certificate")
        self.generation += 1
        key, public = generate_key()
        return self._bot(key, public, ttl, ident.token_sha256)

    def issue_database(self, ident: BotIdentity, *, service: str, database: str,
                       username: str, ttl: dt.timedelta) -> Credentials:
        from mwiproxy.bot.cluster import credentials_from
        from mwiproxy.bot.credentials import generate_key

        self._call("issue")
        key, public = generate_key()
        route = DatabaseRoute(service, "postgres", username, database)
        db = Identity(user="bot-x", usage=(oids.USAGE_DATABASE,), route=route, bot_name="x")
        return credentials_from(key, self._sign(db, public, ttl))


def make_config(tmp_path: Path, extra: str = "", token: str = "tok", **top: str) -> BotConfig:
    lines = [f"{k}: {v}" for k, v in {"credential_ttl": "20s", "renewal_interval": "1s",
                                        **top}.items()]
    text = "\n".join([
        "version: v2", "proxy_server: 127.0.0.1:3080", "insecure: true",
        "onboarding:", f"  token: {token}" if token else "  join_method: token",
        f"storage: {tmp_path / 'storage'}", *lines,
        "services:",
        "  - type: database", "    name: out", f"    destination: {tmp_path / 'out'}",
        "    service: pg", "    username: alice",
        "  - type: database-tunnel", "    name: tun", "    listen: 127.0.0.1:0",
        "    service: pg", "    database: app", "    username: alice",
        "  - type: identity", "    name: me", f"    destination: {tmp_path / 'me'}",
        extra,
    ])
    return parse_bot_config(load_yaml_documents(text, "t.yaml")[0], "t.yaml")


def keeper_for(config: BotConfig, cluster: FakeCluster) -> IdentityKeeper:
    return IdentityKeeper(config, client=cluster)  # type: ignore[arg-type]


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
