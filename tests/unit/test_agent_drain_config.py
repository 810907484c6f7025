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
