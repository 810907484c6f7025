from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pytest

from mwiproxy.config.cluster import (
    ClusterConfig,
    DatabaseConfig,
    DatabaseTLS,
    default_data_dir,
    is_loopback_addr,
    load_cluster_config,
)
from mwiproxy.config.loader import ConfigError
from mwiproxy.wire.addr import split_host_port

FULL = """\
version: v1
cluster_name: example.local
data_dir: {data_dir}
storage: {{type: sqlite, path: {data_dir}/custom.db}}
proxy:
  listen_addr: 127.0.0.1:3080
  public_addr: proxy.example.com:3080
log: {{level: debug, format: json}}
databases:
  - name: example-server
    protocol: postgres
    uri: localhost:5432
    description: "main db"
    static_labels: {{env: dev}}
    tls: {{mode: verify-full, ca_file: {ca}, server_name: db.internal}}
    admin_user: ""
  - name: cache
    protocol: redis
    uri: "[::1]:6379"
"""


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("not checked here\n")
    return str(path)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return str(path)


def test_full_file(tmp_path: Path, ca_file: str) -> None:
    config = load_cluster_config(write(tmp_path, FULL.format(data_dir=tmp_path, ca=ca_file)))
    assert config.cluster_name == "example.local"
    assert config.storage_path == f"{tmp_path}/custom.db"
    assert config.proxy.public_addr == "proxy.example.com:3080"
    assert (config.log.level, config.log.format) == ("debug", "json")
    db = config.database("example-server")
    assert db == DatabaseConfig(
        name="example-server",
        protocol="postgres",
        uri="localhost:5432",
        description="main db",
        static_labels={"env": "dev"},
        tls=DatabaseTLS(mode="verify-full", ca_file=ca_file, server_name="db.internal"),
    )
    assert db.host_port == ("localhost", 5432)
    cache = config.database("cache")
    assert cache is not None and cache.host_port == ("::1", 6379)
    assert config.database("missing") is None


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MWIPROXY_DATA_DIR", str(tmp_path / "data"))
    for config in (load_cluster_config(write(tmp_path, "")), ClusterConfig.default()):
        assert config.cluster_name == "mwiproxy.local"
        assert config.data_dir == str(tmp_path / "data")
        assert config.storage_path == str(tmp_path / "data" / "state.db")
        assert config.storage.type == "sqlite"
        assert config.proxy.listen_addr == config.proxy.public_addr == "127.0.0.1:3080"
        assert (config.log.level, config.log.format) == ("info", "text")
        assert config.databases == []
        assert (config.proxy.certificate_ttl, config.proxy.link_certificate_ttl,
                config.proxy.renew_at) == (timedelta(hours=720), timedelta(hours=12), 0.5)
        assert config.auth.admin_identity_ttl == timedelta(hours=720)
    assert ClusterConfig.default("/srv/x").storage_path == "/srv/x/state.db"


def test_own_certificate_lifetimes(tmp_path: Path) -> None:
    config = load_cluster_config(write(tmp_path, (
        "proxy: {certificate_ttl: 5s, link_certificate_ttl: 1m, renew_at: 0.75}\n"
        "auth: {admin_identity_ttl: 8760h}\n")))
    assert (config.proxy.certificate_ttl, config.proxy.link_certificate_ttl,
            config.proxy.renew_at) == (timedelta(seconds=5), timedelta(minutes=1), 0.75)
    assert config.auth.admin_identity_ttl == timedelta(days=365)


def test_proxy_workers(tmp_path: Path) -> None:
    assert load_cluster_config(write(tmp_path, "")).proxy.workers == 0  # one per core
    assert load_cluster_config(write(tmp_path, "proxy: {workers: 2}\n")).proxy.workers == 2


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MWIPROXY_DATA_DIR", "/opt/mwi")
    assert default_data_dir() == "/opt/mwi"
    monkeypatch.delenv("MWIPROXY_DATA_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir() == "/var/lib/mwiproxy"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_data_dir() == os.path.expanduser("~/.local/share/mwiproxy")


DB = "databases:\n  - name: a\n    protocol: postgres\n    uri: localhost:5432\n"

BAD = [
    # (yaml, line, key, fragment)
    ("version: v2\n", 1, "version", "must be one of 'v1'"),
    ("cluster_nmae: x\n", 1, "cluster_nmae", 'did you mean "cluster_name"'),
    ("cluster_name: 'bad name'\n", 1, "cluster_name", "not a valid cluster name"),
    ("data_dir: ''\n", 1, "data_dir", "must not be empty"),
    ("storage: {type: postgres}\n", 1, "storage.conn_string", "required for type: postgres"),
    ("storage:\n  type: postgres\n  conn_string: 'host=db port'\n", 3, "storage.conn_string",
     "not a PostgreSQL connection string"),
    ("storage:\n  type: postgres\n  conn_string: /nonexistent/pg.conn\n", 3,
     "storage.conn_string", "cannot read"),
    ("storage:\n  conn_string: 'host=db'\n", 2, "storage.conn_string",
     "only for type: postgres"),
    ("storage:\n  type: postgres\n  path: /x.db\n  conn_string: 'host=db'\n", 3,
     "storage.path", "only for type: sqlite"),
    ("storage: {type: mysql}\n", 1, "storage.type", "must be one of 'sqlite', 'postgres'"),
    ("storage:\n  path: [x]\n", 2, "storage.path", "expected a string"),
    ("storage:\n  size: 1\n", 2, "storage.size", "unknown field"),
    ("proxy:\n  listen_addr: localhost\n", 2, "proxy.listen_addr", "not host:port"),
    ("proxy:\n  listen_addr: 127.0.0.1:70000\n", 2, "proxy.listen_addr", "0 to 65535"),
    ("proxy:\n  listen_addr: ::1:3080\n", 2, "proxy.listen_addr", "brackets"),
    ("proxy:\n  listen_addr: '[nope]:3080'\n", 2, "proxy.listen_addr", "not an IPv6"),
    ("proxy:\n  listen_addr: 'b@d:3080'\n", 2, "proxy.listen_addr", "not a valid host"),
    ("proxy:\n  public_addr: x:y\n", 2, "proxy.public_addr", "port must be"),
    ("proxy:\n  listen: x\n", 2, "proxy.listen", 'did you mean "listen_addr"'),
    ("proxy:\n  certificate_ttl: 4s\n", 2, "proxy.certificate_ttl", "between 5s and 8760h"),
    ("proxy:\n  certificate_ttl: 9000h\n", 2, "proxy.certificate_ttl", "between 5s and 8760h"),
    ("proxy:\n  link_certificate_ttl: 200h\n", 2, "proxy.link_certificate_ttl",
     "between 5s and 168h"),
    ("proxy:\n  renew_at: 0.95\n", 2, "proxy.renew_at", "between 0.1 and 0.9"),
    ("proxy:\n  renew_at: half\n", 2, "proxy.renew_at", "a number"),
    ("proxy:\n  renew: 0.5\n", 2, "proxy.renew", 'did you mean "renew_at"'),
    ("proxy:\n  workers: 65\n", 2, "proxy.workers", "0 (one per core) or 1 .. 64"),
    ("proxy:\n  workers: -1\n", 2, "proxy.workers", "0 (one per core) or 1 .. 64"),
    ("proxy:\n  workers: two\n", 2, "proxy.workers", "an integer"),
    ("auth:\n  admin_identity_ttl: 1s\n", 2, "auth.admin_identity_ttl", "between 5s and"),
    ("log: {level: verbose}\n", 1, "log.level", "'debug', 'info', 'warning', 'error'"),
    ("log: {format: xml}\n", 1, "log.format", "'text', 'json'"),
    ("log:\n  colour: true\n", 2, "log.colour", "unknown field"),
    ("databases: {a: b}\n", 1, "databases", "expected a list"),
    ("databases:\n  - protocol: postgres\n    uri: h:1\n", 2, "databases[0].name", "is required"),
    ("databases:\n  - name: a\n    uri: h:1\n", 2, "databases[0].protocol", "is required"),
    ("databases:\n  - name: a\n    protocol: postgres\n", 2, "databases[0].uri", "is required"),
    (DB.replace("name: a", "name: Bad_Name"), 2, "databases[0].name", "not a valid name"),
    (DB.replace("postgres", "oracle"), 3, "databases[0].protocol", "'postgres', 'mysql'"),
    (DB.replace("localhost:5432", "localhost"), 4, "databases[0].uri", "not host:port"),
    (DB.replace("localhost:5432", "localhost:0"), 4, "databases[0].uri", "1 to 65535"),
    (DB + "    static_labels: {env: 1}\n", 5, "databases[0].static_labels.env", "a string"),
    (DB + "    static_labels: {'': x}\n", 5, "databases[0].static_labels", "must not be empty"),
    (DB + "    tls: {mode: none}\n", 5, "databases[0].tls.mode", "'verify-full', 'verify-ca'"),
    (DB + "    tls:\n      ca_file: /nonexistent\n", 6, "databases[0].tls.ca_file", "not exist"),
    (DB + "    tls:\n      ca: x\n", 6, "databases[0].tls.ca", 'did you mean "ca_file"'),
    (DB + "    admin: x\n", 5, "databases[0].admin", 'did you mean "admin_user"'),
    (
        DB + "  - name: b\n    protocol: mysql\n    uri: h:3306\n" + DB[11:],
        8,
        "databases[2].name",
        "duplicate database name 'a'",
    ),
    ("db_service:\n  heartbeat_ttl: 1s\n", 2, "db_service.heartbeat_ttl", "between 3s and 10m"),
    ("db_service:\n  auth_server: nope\n", 2, "db_service.auth_server", "not host:port"),
    ("db_service:\n  ca_pins: [sha1:x]\n", 2, "db_service.ca_pins[0]", "sha256:<64 hex"),
    ("db_service:\n  listen: x\n", 2, "db_service.listen", 'did you mean "listen_addr"'),
    ("auth:\n  max_token_ttl: 100000h\n", 2, "auth.max_token_ttl", "between 1m and 30 days"),
    ("auth:\n  max_certificate_ttl: 8760h\n", 2, "auth.max_certificate_ttl", "between 1m and 7 days"),
    ("auth:\n  max_token: 1h\n", 2, "auth.max_token", 'did you mean "max_token_ttl"'),
    ("a: 1\n---\nb: 2\n", 3, "", "single YAML document"),
    ("databases: [\n", 2, "", "invalid YAML"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"), BAD, ids=[f"{b[2] or 'file'}:{b[3]}" for b in BAD]
)
def test_bad_config(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_cluster_config(path)
    err = info.value
    assert (err.file, err.line, err.key) == (path, line, key)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}:")


def test_postgres_storage(tmp_path: Path) -> None:
    conn = tmp_path / "pg.conn"
    conn.write_text("host=db.example dbname=mwiproxy user=mwi password=secret\n")
    path = write(tmp_path, f"storage:\n  type: postgres\n  conn_string: {conn}\n")
    storage = load_cluster_config(path).storage
    assert storage.type == "postgres"
    assert storage.resolved_conn_string() == "host=db.example dbname=mwiproxy user=mwi " \
                                             "password=secret"
    inline = write(tmp_path, "storage: {type: postgres, conn_string: 'postgresql://db/mwi'}\n")
    assert load_cluster_config(inline).storage.resolved_conn_string() == "postgresql://db/mwi"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_cluster_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("127.0.0.1:3080", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("0.0.0.0:3080", False),
        ("10.1.2.3:3080", False),
        ("proxy.example.com:443", False),
    ],
)
def test_is_loopback_addr(addr: str, loopback: bool) -> None:
    assert is_loopback_addr(addr) is loopback


def test_non_loopback_listen_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "proxy:\n  listen_addr: 0.0.0.0:3080\n")
    with caplog.at_level(logging.WARNING, logger="mwiproxy.config"):
        config = load_cluster_config(path)
    assert config.proxy.public_addr == "0.0.0.0:3080"
    assert "not a loopback address" in caplog.text


def test_split_host_port() -> None:
    assert split_host_port("h:0") == ("h", 0)
    with pytest.raises(ValueError, match="1 to 65535"):
        split_host_port("h:0", min_port=1)
