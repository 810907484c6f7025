"""`mwiproxy start` with its state in PostgreSQL (`storage: {type: postgres}`): a bot
joins, psql connects through the tunnel, and the state survives a restart."""

from __future__ import annotations

import psycopg
import pytest

from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import CLUSTER_YAML, cluster_config, start_topology


def test_a_cluster_on_postgres_storage_serves_a_bot(tmp_path, storage_server):
    conn_string = storage_server().fresh()
    template = CLUSTER_YAML + f"storage:\n  type: postgres\n  conn_string: '{conn_string}'\n"
    with start_topology(tmp_path, template) as topo:
        out = topo.bot_output("example")
        tunnel = topo.local_proxy(out, tunnel=True)
        res = topo.psql(topo.dsn(tunnel), "SELECT current_user")
        assert res.returncode == 0 and res.stdout.strip() == "alice", res.stderr
        assert not (topo.cluster.data_dir / "state.db").exists()
        with psycopg.connect(conn_string) as conn:
            assert conn.execute("SELECT name, generation FROM bots").fetchall() == \
                [("example", 1)]
            assert conn.execute("SELECT count(*) FROM audit WHERE type = 'bot.join'"
                                ).fetchone() == (1,)
        assert "intact" in topo.cluster.ctl("audit", "verify").stdout
        topo.cluster.stop()
        topo.cluster.start()
        assert "example" in topo.cluster.ctl("bots", "ls").stdout
        assert topo.cluster.ctl("audit", "verify").returncode == 0


def test_an_unreachable_postgres_storage_stops_the_start_with_one_line(tmp_path):
    conn_string = f"host=127.0.0.1 port={free_port()} user=mwi password=hunter2 dbname=x"
    cluster = ClusterProcess(tmp_path / "data", config=cluster_config(
        1, CLUSTER_YAML + f"storage: {{{{type: postgres, conn_string: '{conn_string}'}}}}\n"))
    with pytest.raises(RuntimeError, match="exited 1") as info:
        cluster.start()
    output = str(info.value).split("\n", 1)[1]
    (line,) = output.splitlines()
    assert line.startswith("ERROR: storage: cannot connect to the PostgreSQL storage (")
    assert "Connection refused" in line and "hunter2" not in line
