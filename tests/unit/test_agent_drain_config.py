"""`db_service.drain_timeout`: how long a database agent's open link sessions may finish
after SIGTERM. Default like the proxy's, bounded, errors named file:line:key, and a
SIGHUP applies a new value without a restart."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from mwiproxy.config.cluster import ClusterConfig, load_cluster_config
from mwiproxy.config.loader import ConfigError
from mwiproxy.dbagent.agent import DatabaseAgent

AGENT = """\
version: v1
data_dir: {data_dir}
db_service:
  auth_server: 127.0.0.1:3080
{extra}databases:
  - name: agent-db
    protocol: postgres
    uri: 127.0.0.1:5432
"""


def load(tmp_path: Path, extra: str = "") -> ClusterConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT.format(data_dir=tmp_path / "data", extra=extra))
    return load_cluster_config(str(path))


def test_the_default_is_the_proxys(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.db_service.drain_timeout == cfg.proxy.drain_timeout == timedelta(seconds=30)


@pytest.mark.parametrize(("value", "expected"), [
    ("0s", timedelta(0)), ("10s", timedelta(seconds=10)), ("1h", timedelta(hours=1))])
def test_a_duration_within_bounds(tmp_path: Path, value: str, expected: timedelta) -> None:
    cfg = load(tmp_path, f"  drain_timeout: {value}\n")
    assert cfg.db_service.drain_timeout == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("2h", "between 0s and 1h"), ("-1s", ""), ("soon", "")])
def test_a_bad_value_names_file_line_and_key(tmp_path: Path, value: str,
                                             fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"  drain_timeout: {value}\n")
    err = info.value
    assert (err.file, err.line, err.key) == (str(tmp_path / "agent.yaml"), 5,
                                             "db_service.drain_timeout")
    assert fragment in err.message


def test_sighup_applies_a_new_drain_timeout(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    agent = DatabaseAgent(load(tmp_path, "  drain_timeout: 10s\n"))

    async def no_beat() -> None:  # the cluster is not there: the reload's heartbeat
        pass

    agent.heartbeat = no_beat  # type: ignore[method-assign]
    level = logging.getLogger().level  # the reload sets the root logger's from log.level
    try:
        with caplog.at_level(logging.WARNING, logger="mwiproxy.agent"):
            asyncio.run(agent.reload(load(tmp_path, "  drain_timeout: 2s\n")))
    finally:
        logging.getLogger().setLevel(level)
    assert agent.service.drain_timeout == timedelta(seconds=2)
    assert "needs a restart" not in caplog.text  # drain_timeout alone: applied, no warning


def test_the_agent_takes_several_cluster_addresses(tmp_path: Path) -> None:
    """`auth_server: a:3080,b:3080`, a YAML list, or a repeated `--auth-server`: cluster
    processes on one storage, tried in failover order; a bad item names the key."""
    from mwiproxy.cli.mwiproxy import _load, build_parser

    listed = load(tmp_path).db_service
    listed.auth_server = "127.0.0.1:3080, 127.0.0.1:3090"
    listed.validate()
    assert DatabaseAgent(load(tmp_path)).failover.order() == ["127.0.0.1:3080"]
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT.format(data_dir=tmp_path / "data", extra="").replace(
        "auth_server: 127.0.0.1:3080", "auth_server: [127.0.0.1:3080, 127.0.0.1:3090]"))
    cfg = load_cluster_config(str(path))
    assert cfg.db_service.auth_server == "127.0.0.1:3080,127.0.0.1:3090"
    assert DatabaseAgent(cfg).failover.order() == ["127.0.0.1:3080", "127.0.0.1:3090"]
    args = build_parser().parse_args(["start", "--roles=db", "-c", str(path),
                                      "--auth-server=b:3080", "--auth-server=a:3080"])
    assert _load(args).db_service.auth_server == "b:3080,a:3080"
    for bad, why in (("[127.0.0.1:3080, 127.0.0.1:3080]", "appears twice"),
                     ("[]", "an empty list"), ("127.0.0.1:3080,nope", "not host:port")):
        path.write_text(AGENT.format(data_dir=tmp_path / "data", extra="").replace(
            "auth_server: 127.0.0.1:3080", f"auth_server: {bad}"))
        with pytest.raises(ConfigError, match=why) as err:
            load_cluster_config(str(path))
        assert err.value.key == "db_service.auth_server", err.value


def test_the_agent_calls_the_next_cluster_address_when_one_is_down(tmp_path: Path) -> None:
    from mwiproxy.auth.client import ClusterUnreachable, first_answering

    cfg = load(tmp_path)
    cfg.db_service.auth_server = "a:3080,b:3080"
    agent = DatabaseAgent(cfg)
    tried: list[str] = []

    def a_is_down(address: str) -> str:
        tried.append(address)
        if address == "a:3080":
            raise ClusterUnreachable("refused")
        return address
    assert first_answering(agent.failover, a_is_down) == "b:3080"
    assert first_answering(agent.failover, a_is_down) == "b:3080"
    assert tried == ["a:3080", "b:3080", "b:3080"]
