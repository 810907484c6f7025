"""TunnelSet: the bot's database tunnels outlive each Renewer. A reload keeps an
unchanged tunnel (same runner task, same credentials holder), restarts a changed one,
stops a removed one; a lock stops them all (the fake runner stands for the local proxy)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from mwiproxy.bot.keeper import BotStopped
from mwiproxy.bot.renewer import Renewer
from mwiproxy.bot.tunnels import TunnelContext, TunnelSet
from mwiproxy.config.bot import BotConfig, DatabaseTunnelService
from mwiproxy.metrics.diag import HealthRegistry
from tests.unit.bot._fakecluster import FakeCluster, keeper_for, make_config


class FakeRunner:
    """Listens forever once the credentials are there; records starts and stops."""

    def __init__(self) -> None:
        self.started: list[TunnelContext] = []
        self.stopped: list[TunnelContext] = []

    async def __call__(self, ctx: TunnelContext) -> None:
        self.started.append(ctx)
        try:
            await ctx.holder.wait()
            ctx.accepting(lambda: (True, ""))
            await asyncio.Event().wait()
        finally:
            self.stopped.append(ctx)
            ctx.not_accepting("draining: not accepting new connections")


def with_tunnel(config: BotConfig, **changes: object) -> BotConfig:
    """`config` with its tunnel `tun` changed (or removed: changes == {"removed": True})."""
    services = []
    for s in config.services:
        if isinstance(s, DatabaseTunnelService):
            if changes.get("removed"):
                continue
            s = dataclasses.replace(s, **changes)  # type: ignore[arg-type]
        services.append(s)
    return dataclasses.replace(config, services=services)


async def _until(predicate, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_unchanged_tunnel_keeps_its_runner_and_holder(tmp_path):
    config = make_config(tmp_path)
    runner, health = FakeRunner(), HealthRegistry()

    async def scenario() -> None:
        tunnels = TunnelSet(runner, health)
        await tunnels.apply(config)
        holder = tunnels.holders["tun"]
        tunnels.start()
        await _until(lambda: len(runner.started) == 1)
        # a reload of the same file, and one changing only renewal settings
        await tunnels.apply(make_config(tmp_path))
        tunnels.start()
        await tunnels.apply(with_tunnel(config, credential_ttl=timedelta(seconds=40),
                                        renewal_interval=timedelta(seconds=5)))
        tunnels.start()
        assert tunnels.holders["tun"] is holder
        assert len(runner.started) == 1 and runner.stopped == [] and tunnels.running("tun")
        await tunnels.stop_all()
        assert len(runner.stopped) == 1 and not tunnels.running("tun")

    asyncio.run(scenario())


@pytest.mark.parametrize("change", [{"listen": "127.0.0.1:1"}, {"database": "other"},
                                    {"username": "bob"}, {"service": "pg2"}])
def test_changed_tunnel_restarts_with_a_new_holder(tmp_path, change):
    config = make_config(tmp_path)
    runner, health = FakeRunner(), HealthRegistry()

    async def scenario() -> None:
        tunnels = TunnelSet(runner, health)
        await tunnels.apply(config)
        old = tunnels.holders["tun"]
        tunnels.start()
        await _until(lambda: len(runner.started) == 1)
        await tunnels.apply(with_tunnel(config, **change))
        assert runner.stopped == runner.started  # stopped before the new one starts
        tunnels.start()
        await _until(lambda: len(runner.started) == 2)
        new = runner.started[1]
        assert new.holder is tunnels.holders["tun"] is not old
        assert all(getattr(new.service, k) == v for k, v in change.items())
        await tunnels.stop_all()

    asyncio.run(scenario())


def test_a_new_proxy_address_restarts_the_tunnel(tmp_path):
    config = make_config(tmp_path)
    runner = FakeRunner()

    async def scenario() -> None:
        tunnels = TunnelSet(runner, HealthRegistry())
        await tunnels.apply(config)
        tunnels.start()
        await _until(lambda: len(runner.started) == 1)
        await tunnels.apply(dataclasses.replace(config, proxy_server="127.0.0.1:4080"))
        tunnels.start()
        await _until(lambda: len(runner.started) == 2)
        assert runner.stopped == runner.started[:1]
        await tunnels.stop_all()

    asyncio.run(scenario())


def test_removed_tunnel_stops_and_added_one_starts(tmp_path):
    config = make_config(tmp_path)
    runner = FakeRunner()

    async def scenario() -> None:
        tunnels = TunnelSet(runner, HealthRegistry())
        await tunnels.apply(with_tunnel(config, removed=True))
        tunnels.start()
        assert tunnels.holders == {} and runner.started == []
        await tunnels.apply(config)  # added
        tunnels.start()
        await _until(lambda: len(runner.started) == 1)
        await tunnels.apply(with_tunnel(config, removed=True))  # removed again
        assert runner.stopped == runner.started and tunnels.holders == {}
        assert not tunnels.running("tun")

    asyncio.run(scenario())


def test_a_failed_runner_is_started_again_by_a_reload(tmp_path):
    config = make_config(tmp_path)
    calls: list[TunnelContext] = []

    async def failing(ctx: TunnelContext) -> None:
        calls.append(ctx)
        raise OSError("address already in use")

    async def scenario() -> None:
        tunnels = TunnelSet(failing, HealthRegistry())
        await tunnels.apply(config)
        tunnels.start()
        await _until(lambda: len(calls) == 1 and not tunnels.running("tun"))
        await tunnels.apply(config)
        tunnels.start()
        await _until(lambda: len(calls) == 2)

    asyncio.run(scenario())


def test_a_reload_renews_into_the_kept_holder_and_stays_ready(tmp_path):
    """The daemon's sequence: cancel the Renewer, apply the config, a new Renewer."""
    cluster, config = FakeCluster(), make_config(tmp_path)
    keeper, health, runner = keeper_for(config, cluster), HealthRegistry(), FakeRunner()
    renewals: list[object] = []

    async def scenario() -> None:
        tunnels = TunnelSet(runner, health)
        await tunnels.apply(config)
        holder = tunnels.holders["tun"]
        holder.on_change(renewals.append)
        first = asyncio.ensure_future(Renewer(config, keeper, health=health,
                                              tunnel_set=tunnels).run())
        await _until(lambda: "tun" not in health.readiness()[1] and renewals)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert tunnels.running("tun")
        await tunnels.apply(make_config(tmp_path))
        second = Renewer(make_config(tmp_path), keeper, health=health, tunnel_set=tunnels)
        assert "tun" not in health.readiness()[1]  # ready through the reload
        before = len(renewals)
        task = asyncio.ensure_future(second.run())
        await _until(lambda: len(renewals) > before)
        assert second.tunnels["tun"] is holder and len(runner.started) == 1
        assert "tun" not in health.readiness()[1]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await tunnels.stop_all()

    asyncio.run(scenario())


def test_a_lock_stops_every_tunnel(tmp_path):
    cluster, config = FakeCluster(), make_config(tmp_path)
    health, runner = HealthRegistry(), FakeRunner()

    async def scenario() -> None:
        tunnels = TunnelSet(runner, health)
        await tunnels.apply(config)
        task = asyncio.ensure_future(Renewer(config, keeper_for(config, cluster),
                                             health=health, tunnel_set=tunnels).run())
        await _until(lambda: cluster.generation >= 2 and tunnels.running("tun"))
        cluster.generation = 99
        with pytest.raises(BotStopped):
            await asyncio.wait_for(task, 30)
        assert runner.stopped == runner.started and not tunnels.running("tun")
        assert tunnels.holders == {}

    asyncio.run(scenario())
    assert "tun" in health.readiness()[1]
