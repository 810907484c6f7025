"""Renewal that survives faults without weakening theft detection: the next key is
stored before the cluster is asked, reused when the answer was lost, and a disk that
refuses the new identity keeps the old one in use (bot/keeper.py, bot/state.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil

import pytest

from mwiproxy.auth.client import ClusterUnreachable
from mwiproxy.bot import destinations, state
from mwiproxy.bot.keeper import BotStopped
from mwiproxy.bot.renewer import BOT_IDENTITY, Renewer
from mwiproxy.bot.state import PENDING_FILE, BotStateStore, PendingKey, StorageUnavailable
from mwiproxy.config.bot import DirectoryDestinationConfig
from mwiproxy.metrics.diag import HEALTHY, UNHEALTHY, HealthRegistry
from tests.unit.bot._fakecluster import FakeCluster, fingerprint, keeper_for, make_config


def stored_generation(config) -> int:
    ident = BotStateStore(config.storage_directory).load()
    assert ident is not None
    return ident.generation


def disk_full(monkeypatch: pytest.MonkeyPatch, *, identity: bool = True, key: bool = False):
    """Make writes of the identity bundle and/or of the next key fail with ENOSPC."""
    def refuse(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if identity:
        monkeypatch.setattr(destinations.DirectoryDestination, "write_bundle", refuse)
    if key:
        monkeypatch.setattr(state, "_replace_file", refuse)


# --- lost replies -----------------------------------------------------------------------


def test_a_lost_renewal_reply_is_asked_again_with_the_same_stored_key(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    keeper = keeper_for(config, cluster)
    keeper.ensure()
    cluster.lose_replies = 1
    with pytest.raises(ClusterUnreachable):
        keeper.renew()
    assert cluster.generation == 2 and keeper.current.generation == 1  # committed, unseen
    pending = tmp_path / "storage" / PENDING_FILE
    assert pending.exists() and os.stat(pending).st_mode & 0o777 == 0o600
    assert not [p for p in os.listdir(tmp_path / "storage") if ".tmp-" in p]
    renewed = keeper.renew()
    assert renewed.generation == 2 and stored_generation(config) == 2
    assert cluster.keys[-1] == cluster.keys[-2] == fingerprint(renewed.creds.key_pem)
    assert cluster.mismatches == 0 and not pending.exists()
    assert keeper.renew().generation == 3  # and the next renewal takes a fresh key
    assert cluster.keys[-1] != cluster.keys[-2]


def test_a_lost_renewal_reply_survives_a_restart(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    keeper = keeper_for(config, cluster)
    keeper.ensure()
    cluster.lose_replies = 1
    with pytest.raises(ClusterUnreachable):
        keeper.renew()
    again = keeper_for(config, cluster)  # the process restarts before any retry
    assert again.ensure().generation == 1
    assert again.renew().generation == 2 == cluster.generation
    assert cluster.mismatches == 0 and cluster.keys[-1] == cluster.keys[-2]


def test_a_lost_join_reply_joins_again_with_the_same_key(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    cluster.lose_replies = 1
    with pytest.raises(ClusterUnreachable):
        keeper_for(config, cluster).ensure()
    stored = BotStateStore(config.storage_directory).load_pending()
    assert stored is not None and stored.joins_with("tok")
    ident = keeper_for(config, cluster).ensure()  # a restart retries the join
    assert cluster.calls == ["join", "join"] and cluster.keys[0] == cluster.keys[1]
    assert ident.generation == 1 and stored_generation(config) == 1
    assert not (tmp_path / "storage" / PENDING_FILE).exists()


def test_a_leftover_key_for_an_older_certificate_is_not_reused(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    keeper = keeper_for(config, cluster)
    first = keeper.ensure()
    leftover = PendingKey.for_renewal(first)
    keeper.renew()
    keeper.store.save_pending(leftover)  # as if removing it had failed
    restarted = keeper_for(config, cluster)
    restarted.ensure()
    restarted.renew()
    assert fingerprint(leftover.key_pem) not in cluster.keys[1:]
    assert cluster.generation == 3 and cluster.mismatches == 0


# --- a disk that refuses writes ----------------------------------------------------------


def test_a_disk_refusing_the_identity_keeps_the_stored_one_across_restarts(
        tmp_path, monkeypatch):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    keeper = keeper_for(config, cluster)
    keeper.ensure()
    path = config.storage_directory.path
    with monkeypatch.context() as m:
        disk_full(m)
        for _ in range(3):
            with pytest.raises(StorageUnavailable) as e:
                keeper.renew()
            assert str(e.value) == (f"cannot store the bot identity in {path} "
                                    "(errno 28, No space left on device)")
            assert keeper.current.generation == 1  # never switches to what it cannot keep
        restarted = keeper_for(config, cluster)
        assert restarted.ensure().generation == 1
        with pytest.raises(StorageUnavailable):
            restarted.renew()
    assert cluster.generation == 2 and len(set(cluster.keys[1:])) == 1
    assert restarted.renew().generation == 2 and stored_generation(config) == 2
    assert cluster.mismatches == 0


def test_a_disk_refusing_the_next_key_asks_the_cluster_nothing(tmp_path, monkeypatch):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    keeper = keeper_for(config, cluster)
    keeper.ensure()
    with monkeypatch.context() as m:
        disk_full(m, identity=False, key=True)
        with pytest.raises(StorageUnavailable, match=r"cannot store the bot's next key in "
                           r".*storage \(errno 28, No space left on device\)"):
            keeper.renew()
    assert cluster.calls == ["join"] and keeper.current.generation == 1
    assert keeper.renew().generation == 2


def test_a_storage_path_that_is_a_file_names_enotdir(tmp_path):
    blocker = tmp_path / "storage"
    blocker.write_text("not a directory")
    store = BotStateStore(DirectoryDestinationConfig(str(blocker / "bot")))
    with pytest.raises(StorageUnavailable, match=r"in .*/storage/bot \(errno 20, Not a directory\)"):
        store.save_pending(PendingKey(b"not a key: never read", "join", token_sha256="x"))
    assert store.load_pending() is None


def test_join_waits_until_its_identity_can_be_stored(tmp_path, monkeypatch):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    with monkeypatch.context() as m:
        disk_full(m)
        with pytest.raises(StorageUnavailable):
            keeper_for(config, cluster).ensure()
    assert keeper_for(config, cluster).ensure().generation == 1
    assert cluster.calls == ["join", "join"] and cluster.keys[0] == cluster.keys[1]


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_the_renewer_reports_a_full_disk_and_recovers_by_itself(tmp_path, monkeypatch, caplog):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    config.services = []
    health = HealthRegistry()
    keeper = keeper_for(config, cluster)
    renewer = Renewer(config, keeper, health=health)
    path = config.storage_directory.path

    async def scenario() -> None:
        task = asyncio.ensure_future(renewer.run())
        # between renewals (none in flight: no stored next key, the last one stored), so
        # the next one fails at its key; one caught midway (key stored, reply in hand)
        # rightly asks again with that key when its identity cannot be stored
        await _until(lambda: cluster.generation >= 2
                     and not (tmp_path / "storage" / PENDING_FILE).exists()
                     and stored_generation(config) == cluster.generation)
        with monkeypatch.context() as m:
            disk_full(m, key=True)
            await _until(lambda: health.get(BOT_IDENTITY).status == UNHEALTHY)
            reason = health.get(BOT_IDENTITY).reason
            assert path in reason and "(errno 28, No space left on device)" in reason
            calls = len(cluster.calls)
            await asyncio.sleep(1.5)  # several intervals: retried, never asked the cluster
            assert len(cluster.calls) == calls and not task.done()
        await _until(lambda: health.get(BOT_IDENTITY).status == HEALTHY)
        await _until(lambda: stored_generation(config) > 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="mwiproxy.bot"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"cannot store the bot's next key in {path} (errno 28" in e for e in errors)
    assert cluster.mismatches == 0
    assert keeper.current.generation == stored_generation(config) == cluster.generation


# --- theft detection stays ----------------------------------------------------------------


def test_a_copy_renewing_with_its_own_key_is_locked(tmp_path):
    cluster = FakeCluster()
    config = make_config(tmp_path)
    original = keeper_for(config, cluster)
    original.ensure()
    shutil.copytree(tmp_path / "storage", tmp_path / "copy", symlinks=True)
    original.renew()
    thief = keeper_for(make_config(tmp_path / "copy-root", token="tok"), cluster)
    thief.store = BotStateStore(DirectoryDestinationConfig(str(tmp_path / "copy")))
    thief.ensure()
    with pytest.raises(BotStopped, match="locked this bot"):
        thief.renew()  # generation 1 again, but not with the key generation 2 went to
    assert cluster.mismatches == 1


def test_a_copy_taken_with_an_unanswered_key_is_caught_one_renewal_later(tmp_path):
    """A copy holding the stored next key holds the very private key the cluster issued
    for, so its retry is indistinguishable from the owner's; the next renewal of either
    copy takes a fresh key, and the other copy is then locked."""
    cluster = FakeCluster()
    original = keeper_for(make_config(tmp_path), cluster)
    original.ensure()
    cluster.lose_replies = 1
    with pytest.raises(ClusterUnreachable):
        original.renew()
    shutil.copytree(tmp_path / "storage", tmp_path / "copy", symlinks=True)
    thief = keeper_for(make_config(tmp_path / "copy-root"), cluster)
    thief.store = BotStateStore(DirectoryDestinationConfig(str(tmp_path / "copy")))
    thief.ensure()
    assert thief.renew().generation == 2 and original.renew().generation == 2
    assert original.renew().generation == 3
    with pytest.raises(BotStopped, match="locked this bot"):
        thief.renew()
    assert cluster.mismatches == 1


def test_an_expired_identity_still_stops(tmp_path):
    cluster = FakeCluster()
    keeper = keeper_for(make_config(tmp_path, credential_ttl="0s"), cluster)
    keeper.ensure()
    with pytest.raises(BotStopped, match="expired at"):
        keeper.renew()
    assert cluster.calls == ["join"]
