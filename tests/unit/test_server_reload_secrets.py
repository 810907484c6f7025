"""SIGHUP on `mwiproxy start`: a changed key that may hold a password is named, never shown."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest

from mwiproxy.config.cluster import ClusterConfig
from mwiproxy.devkit.ports import free_port
from mwiproxy.server import Cluster


def test_a_changed_conn_string_is_named_but_not_logged(tmp_path,
                                                       caplog: pytest.LogCaptureFixture):
    config = ClusterConfig.default(str(tmp_path / "data"))
    config.proxy.listen_addr = config.proxy.public_addr = f"127.0.0.1:{free_port()}"
    cluster = Cluster(config)
    try:
        new = copy.deepcopy(config)
        new.storage.type = "postgres"
        new.storage.conn_string = "host=db.example user=mwi password=hunter2"
        with caplog.at_level(logging.WARNING, logger="mwiproxy"):
            cluster.reload(new)
        assert "storage.conn_string changed: needs a restart" in caplog.text
        assert "storage.type changed ('sqlite' → 'postgres')" in caplog.text
        assert "hunter2" not in caplog.text
        assert cluster.config.storage.conn_string == ""  # running on with the old value
    finally:
        asyncio.run(cluster.close())
