from __future__ import annotations

import logging
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from mwiproxy.config.bot import (
    BotConfig,
    DatabaseService,
    DatabaseTunnelService,
    IdentityService,
    load_bot_config,
)
from mwiproxy.config.loader import ConfigError
from mwiproxy.wire.addr import Address, parse_listen

GOOD = """\
version: v2
proxy_server: proxy.example.com:3080
onboarding:
  join_method: token
  token: abc123
  ca_pins: ["sha256:{pin}"]
storage:
  type: directory
  path: /tmp/mwibot-state
  symlinks: secure
credential_ttl: 2h
renewal_interval: 30m
diag_addr: 127.0.0.1:3001
services:
  - type: database
    name: pg
    destination:
      type: directory
      path: /opt/machine-id
    service: postgres-prod
    database: app
    username: alice
    format: cockroach
  - type: database
    destination: /opt/redis-id
    service: cache
  - type: database-tunnel
    listen: tcp://127.0.0.1:25432
    service: postgres-prod
    database: app
    username: alice
    credential_ttl: 10m
    renewal_interval: 5m
  - type: identity
    destination:
      path: /opt/bot-id
      readers: [{{user: 1000}}, {{group: dbas}}]
""".format(pin="ab" * 32)


def write(tmp_path: Path, text: str, name: str = "tbot.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_good_config(tmp_path: Path) -> None:
    cfg = load_bot_config(write(tmp_path, GOOD))
    assert cfg.proxy_server == "proxy.example.com:3080"
    assert cfg.onboarding.resolve_token() == "abc123"
    assert cfg.storage_directory.path == "/tmp/mwibot-state"
    assert cfg.storage_directory.symlinks == "secure"
    assert (cfg.credential_ttl, cfg.renewal_interval) == (timedelta(hours=2), timedelta(minutes=30))
    pg, cache, tunnel, ident = cfg.services
    assert isinstance(pg, DatabaseService) and pg.format == "cockroach"
    assert pg.directory.path == "/opt/machine-id" and pg.directory.symlinks == "try-secure"
    assert isinstance(cache, DatabaseService) and cache.directory.path == "/opt/redis-id"
    assert cache.name == "database-2"
    assert cache.effective_username("redis") == "default"
    assert cache.effective_username("postgres") == ""
    assert isinstance(tunnel, DatabaseTunnelService)
    assert tunnel.address == Address("tcp", host="127.0.0.1", port=25432)
    assert tunnel.credential_ttl == timedelta(minutes=10)
    assert isinstance(ident, IdentityService)
    assert [(r.user, r.group) for r in ident.directory.readers] == [(1000, ""), ("", "dbas")]


def test_defaults(tmp_path: Path) -> None:
    cfg = load_bot_config(write(tmp_path, "version: v2\nauth_server: auth:3025\n"))
    assert cfg.credential_ttl == timedelta(hours=1)
    assert cfg.renewal_interval == timedelta(minutes=20)
    assert cfg.storage_directory.path == "/var/lib/mwibot"
    assert cfg.services == [] and not cfg.oneshot and cfg.diag_addr == ""


def test_round_trip_through_to_yaml(tmp_path: Path) -> None:
    cfg = load_bot_config(write(tmp_path, GOOD))
    again = load_bot_config(write(tmp_path, cfg.to_yaml(), "again.yaml"))
    assert again == cfg


def test_token_from_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = load_bot_config(
        write(tmp_path, f"version: v2\nproxy_server: p:443\nonboarding:\n  token: {token}\n")
    )
    assert cfg.onboarding.resolve_token() == "s3cret"
    token.unlink()
    with pytest.raises(ConfigError, match="cannot read token file"):
        cfg.onboarding.resolve_token()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tcp://0.0.0.0:5432", Address("tcp", "0.0.0.0", 5432)),
        ("localhost:5432", Address("tcp", "localhost", 5432)),
        (":5432", Address("tcp", "127.0.0.1", 5432)),
        ("[::1]:5432", Address("tcp", "::1", 5432)),
        ("unix:///run/pg.sock", Address("unix", path="/run/pg.sock")),
    ],
)
def test_parse_listen(value: str, expected: Address) -> None:
    assert parse_listen(value) == expected
    assert parse_listen(str(expected)) == expected


HEAD = "version: v2\nproxy_server: p:443\n"
BAD = [
    # (yaml, line, key, message fragment)
    ("version: v1\nproxy_server: p:443\n", 1, "version", "expected v2"),
    (HEAD + "bogus: 1\n", 3, "bogus", "unknown field"),
    (HEAD + "fips: true\n", 3, "fips", "no FIPS mode"),
    (HEAD + "auth_server: a:3025\n", 3, "auth_server", "mutually exclusive"),
    ("version: v2\n", 1, "", "set proxy_server"),
    (HEAD + "credential_ttl: soon\n", 3, "credential_ttl", "invalid duration"),
    (HEAD + "diag_addr: nowhere\n", 3, "diag_addr", "not host:port"),
    ("version: v2\nproxy_server: a:3080,,b:3080\n", 2, "proxy_server", "an empty address"),
    ("version: v2\nproxy_server: a:3080,b\n", 2, "proxy_server", "'b' is not host:port"),
    ("version: v2\nproxy_server:\n  - a:3080\n  - a:3080\n", 2, "proxy_server",
     "appears twice"),
    ("version: v2\nproxy_server:\n  - a:3080\n  - {x: 1}\n", 4, "proxy_server",
     "expected a list of host:port"),
    (HEAD + "onboarding:\n  join_method: iam\n", 4, "onboarding.join_method", "not supported"),
    (HEAD + "onboarding:\n  join_method: magic\n", 4, "onboarding.join_method", "unknown join"),
    (HEAD + "onboarding:\n  ca_pins: [md5:00]\n", 4, "onboarding.ca_pins[0]", "sha256"),
    (
        HEAD + f"onboarding:\n  ca_pins: [sha256:{'a' * 64}]\n  ca_path: /ca.pem\n",
        5,
        "onboarding.ca_path",
        "mutually exclusive",
    ),
    (
        HEAD + f"insecure: true\nonboarding:\n  ca_pins: [sha256:{'a' * 64}]\n",
        5,
        "onboarding.ca_pins",
        "mutually exclusive",
    ),
    (HEAD + "storage:\n  type: memory\n  path: x\n", 4, "storage.type", "not supported"),
    (HEAD + "storage:\n  path: /x\n  symlinks: maybe\n", 5, "storage.symlinks", "must be one of"),
    (HEAD + "storage:\n  path: /x\n  acls: required\n", 5, "storage.acls", "cannot set ACLs"),
    (HEAD + "storage:\n  path: /x\n  readers: [{}]\n", 5, "storage.readers[0]", "exactly one"),
    (HEAD + "services:\n  - type: ssh-multiplexer\n", 4, "services[0].type", "not supported"),
    (HEAD + "services:\n  - name: x\n", 4, "services[0].type", "is required"),
    (HEAD + "services: {}\n", 3, "services", "expected a list"),
    (
        HEAD + "services:\n  - type: database\n    service: s\n",
        4,
        "services[0].destination",
        "is required",
    ),
    (
        HEAD + "services:\n  - type: database\n    destination: /d\n",
        4,
        "services[0].service",
        "is required",
    ),
    (
        HEAD
        + "services:\n  - type: database\n    destination: /d\n    service: s\n    format: pem\n",
        7,
        "services[0].format",
        "must be one of",
    ),
    (
        HEAD + "services:\n  - type: database\n    destination: /d\n    service: s\n"
        "    credential_ttl: 1h\n",
        4,
        "services[0].renewal_interval",
        "both",
    ),
    (
        HEAD
        + "services:\n  - type: database\n    destination: {path: /d, bad: 1}\n    service: s\n",
        5,
        "services[0].destination.bad",
        "unknown field",
    ),
    (
        HEAD + "services:\n  - type: database-tunnel\n    listen: ftp://x:1\n    service: s\n"
        "    database: d\n    username: u\n",
        5,
        "services[0].listen",
        "tcp:// or unix://",
    ),
    (
        HEAD + "services:\n  - type: database-tunnel\n    listen: :1\n    service: s\n"
        "    database: d\n",
        4,
        "services[0].username",
        "is required",
    ),
    (
        HEAD + "services:\n  - {type: identity, destination: /a, name: x}\n"
        "  - {type: identity, destination: /b, name: x}\n",
        5,
        "services[1].name",
        "duplicate",
    ),
    (
        HEAD + "outputs:\n  - type: database\n    destination: /d\n    service: s\n    roles: r\n",
        7,
        "outputs[0].roles",
        "expected a list",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), BAD)
def test_bad_config_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_bot_config(path)
    err = info.value
    assert (err.file, err.line, err.key) == (path, line, key), str(err)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}: {key}")


def test_deprecated_spellings_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = HEAD + (
        "certificate_ttl: 3h\ncredential_ttl: 2h\n"
        "outputs:\n  - type: database\n    destination: /d\n    service: s\n"
        "services:\n  - type: identity\n    destination: /i\n"
    )
    with caplog.at_level(logging.WARNING, logger="mwiproxy.config"):
        cfg = load_bot_config(write(tmp_path, text))
    assert cfg.credential_ttl == timedelta(hours=2)  # the new name wins
    assert [s.type for s in cfg.services] == ["identity", "database"]
    assert "'certificate_ttl' is deprecated" in caplog.text
    assert "outputs is deprecated" in caplog.text


def test_certificate_ttl_alone_is_read(tmp_path: Path) -> None:
    cfg = load_bot_config(write(tmp_path, HEAD + "certificate_ttl: 3h\n"))
    assert cfg.credential_ttl == timedelta(hours=3)


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        ("credential_ttl: 25h\n", "over 24h"),
        ("credential_ttl: 10m\n", "shorter than renewal_interval"),
        (
            "services:\n  - {type: identity, destination: /i, credential_ttl: 1m, "
            "renewal_interval: 2m}\n",
            "identity-1: credential_ttl 1m is shorter",
        ),
    ],
)
def test_lifetime_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: str, warning: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="mwiproxy.config"):
        load_bot_config(write(tmp_path, HEAD + extra))
    assert warning in caplog.text


def test_short_ttl_does_not_warn_when_oneshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mwiproxy.config"):
        load_bot_config(write(tmp_path, HEAD + "credential_ttl: 10m\noneshot: true\n"))
    assert "shorter" not in caplog.text


def test_server_not_required_when_caller_supplies_it(tmp_path: Path) -> None:
    cfg = load_bot_config(write(tmp_path, "version: v2\n"), require_server=False)
    assert isinstance(cfg, BotConfig)


def test_proxy_server_takes_several_addresses_as_a_list_or_commas(tmp_path: Path) -> None:
    listed = load_bot_config(write(tmp_path, "version: v2\nproxy_server:\n"
                                   "  - a.example:3080\n  - '[::1]:3080'\n"))
    commas = load_bot_config(write(tmp_path, "version: v2\n"
                                   "proxy_server: a.example:3080, [::1]:3080\n", "b.yaml"))
    assert listed.proxy_server == "a.example:3080,[::1]:3080"
    assert commas.proxy_server == "a.example:3080, [::1]:3080"
    assert "proxy_server: a.example:3080,[::1]:3080" in listed.to_yaml()
