"""`mwibot` command line: every bad config is refused with exit 1 and one line naming
file, line and key (no traceback); the flag forms build the same config as a file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mwiproxy.cli import mwibot
from mwiproxy.config.bot import load_bot_config

PIN = "sha256:" + "ab" * 32
BASE = f"""\
version: v2
proxy_server: 127.0.0.1:3080
onboarding:
  join_method: token
  token: abc
  ca_pins: ["{PIN}"]
storage: /tmp/mwibot-test-storage
services:
  - type: database
    destination: /tmp/mwibot-test-out
    service: example-server
"""

# (name, text replaced, replacement, expected "key: message" fragment)
BAD = [
    ("unknown top-level key", "version: v2\n", "version: v2\nbogus: 1\n", "bogus: unknown field"),
    ("misspelt service key", "    service: example-server\n",
     "    service: example-server\n    formt: tls\n", "services[0].formt: unknown field"),
    ("bad format", "    service: example-server\n",
     "    service: example-server\n    format: pem\n", "services[0].format: invalid value 'pem'"),
    ("unknown service type", "  - type: database\n", "  - type: kubernetes\n",
     "services[0].type: service type 'kubernetes' is not supported"),
    ("bad duration", "version: v2\n", "version: v2\ncredential_ttl: forever\n",
     "credential_ttl: invalid duration"),
    ("bad pin", f'["{PIN}"]', '["abc"]', "onboarding.ca_pins[0]: expected sha256"),
    ("two servers", "version: v2\n", "version: v2\nauth_server: 127.0.0.1:3025\n",
     "auth_server: auth_server and proxy_server are mutually exclusive"),
    ("old version", "version: v2\n", "version: v1\n", "version: unsupported version 'v1'"),
    ("other join method", "join_method: token", "join_method: iam",
     "onboarding.join_method: join method 'iam' is not supported"),
    ("tunnel without listen", "  - type: database\n    destination: /tmp/mwibot-test-out\n",
     "  - type: database-tunnel\n    database: db\n    username: alice\n",
     "services[0].listen: is required"),
    ("reload with both", "    service: example-server\n",
     "    service: example-server\n    reload: {pid_file: /run/x.pid, command: ['true']}\n",
     "services[0].reload: give exactly one of pid_file or command"),
    ("reload bad signal", "    service: example-server\n",
     "    service: example-server\n    reload: {pid_file: /run/x.pid, signal: NOPE}\n",
     "services[0].reload.signal: unknown signal 'NOPE'"),
    ("ttl without interval", "    service: example-server\n",
     "    service: example-server\n    credential_ttl: 5m\n",
     "services[0].renewal_interval: set both credential_ttl and renewal_interval"),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = mwibot.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name,old,new,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_line_and_key(tmp_path, capsys, name, old, new, expected):
    assert old in BASE
    text = BASE.replace(old, new, 1)
    path = tmp_path / "tbot.yaml"
    path.write_text(text)
    code, _, err = run(["start", "-c", str(path)], capsys)
    assert code == 1
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, err
    line = _line_of(text, expected.split(":")[0])
    assert errors[0].startswith(f"ERROR: {path}:{line}: "), (errors[0], line)
    assert expected in errors[0]


def _line_of(text: str, key: str) -> int:
    """The line a key's error points at: its last path component's line."""
    leaf = key.split(".")[-1].split("[")[0]
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().lstrip("- ").startswith(f"{leaf}:") or f"{{{leaf}:" in line or (
                f", {leaf}:" in line):
            return number
    if leaf in ("reload",):
        return next(n for n, ln in enumerate(text.splitlines(), 1) if "reload:" in ln)
    if key.startswith("services[0]"):  # required keys: the service's first line
        return next(n for n, ln in enumerate(text.splitlines(), 1) if ln.startswith("  - "))
    raise AssertionError(f"{key} not in text")


def test_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    path = tmp_path / "tbot.yaml"
    path.write_text("version: v2\nservices: [\n")
    code, _, err = run(["start", "-c", str(path)], capsys)
    assert code == 1 and err.startswith(f"ERROR: {path}:") and "Traceback" not in err
    code, _, err = run(["start", "-c", str(tmp_path / "nope.yaml")], capsys)
    assert code == 1 and "nope.yaml" in err and "Traceback" not in err


def test_bad_config_through_the_real_process(tmp_path):
    path = tmp_path / "tbot.yaml"
    path.write_text(BASE.replace("version: v2\n", "version: v2\nbogus: 1\n"))
    res = subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwibot", "start", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(f"ERROR: {path}:2: bogus: unknown field (known fields: ")
    assert len(res.stderr.splitlines()) == 1


def test_configure_prints_yaml_that_loads_back(tmp_path, capsys):
    argv = ["configure", "database", "--proxy-server", "proxy.example.com:3080",
            "--token", "abc", "--ca-pin", PIN, "--destination", "/opt/machine-id",
            "--service", "pg", "--database", "app", "--username", "alice", "--format", "tls",
            "--storage", "/var/lib/x", "--credential-ttl", "2h", "--renewal-interval", "30m",
            "--reload-pid-file", "/run/pgbouncer.pid", "--oneshot"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    path = tmp_path / "tbot.yaml"
    path.write_text(out)
    config = load_bot_config(str(path))
    assert config.proxy_server == "proxy.example.com:3080" and config.oneshot
    assert config.onboarding.ca_pins == [PIN] and config.storage_directory.path == "/var/lib/x"
    (svc,) = config.services
    assert (svc.type, svc.service, svc.database, svc.username, svc.format) == (
        "database", "pg", "app", "alice", "tls")
    assert svc.reload is not None and svc.reload.pid_file == "/run/pgbouncer.pid"
    assert svc.reload.signum.name == "SIGHUP"
    assert config.to_yaml() == out


@pytest.mark.parametrize("flags,message", [
    (["--ca-pin", "sha256:zz"], "ERROR: --ca-pin: expected sha256:<64 hex digits>"),
    (["--credential-ttl", "soon"], "ERROR: --credential-ttl: invalid duration"),
    (["--reload-signal", "HUP"],
     "ERROR: --reload-pid-file or --reload-command: give exactly one of pid_file or command"),
    (["--join-method", "github"], "ERROR: --join-method: join method 'github'"),
])
def test_bad_flags_name_the_flag(capsys, flags, message):
    argv = ["start", "database", "--proxy-server", "127.0.0.1:3080", "--token", "t",
            "--destination", "/tmp/x", "--service", "pg", *flags]
    code, _, err = run(argv, capsys)
    assert code == 1 and err.startswith(message), err


def test_start_needs_a_config_or_a_mode(capsys):
    code, _, err = run(["start"], capsys)
    assert code == 1 and "mwibot start -c tbot.yaml" in err
    code, _, err = run(["start", "database", "--destination", "/tmp/x", "--service", "pg"],
                       capsys)
    assert code == 1 and "--proxy-server (or --auth-server) is required" in err


def test_flags_may_come_before_or_after_the_mode():
    parser = mwibot.build_parser()
    tail = ["--destination", "d", "--service", "s"]
    assert parser.parse_args(["start", "--oneshot", "database", *tail]).oneshot
    assert parser.parse_args(["start", "database", "--oneshot", *tail]).oneshot
    assert parser.parse_args(["-c", "x.yaml", "start"]).config == "x.yaml"


def test_start_modes_can_be_extended():
    parser = argparse_with_extra_mode()
    args = parser.parse_args(["start", "extra", "--flag"])
    assert args.func(args) == 42


def argparse_with_extra_mode():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    mwibot._add_start(sub)
    extra = mwibot.start_modes(sub).add_parser("extra")
    extra.add_argument("--flag", action="store_true")
    extra.set_defaults(func=lambda a: 42 if a.flag else 0)
    return parser


def test_tunnel_without_local_proxy_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mwibot, "tunnel_runner", lambda: None)  # a build without it
    monkeypatch.setattr(mwibot, "build_parser", _parser_without_proxy)
    path = tmp_path / "tbot.yaml"
    path.write_text(textwrap.dedent(BASE.split("services:")[0]) + textwrap.dedent("""\
        services:
          - type: database-tunnel
            listen: tcp://127.0.0.1:25432
            service: example-server
            database: db
            username: alice
        """))
    code, _, err = run(["start", "-c", str(path)], capsys)
    assert code == 1
    assert err.strip() == ("ERROR: database-tunnel needs the local proxy (mwibot proxy): "
                           "service 'database-tunnel-1' cannot be served")


def _parser_without_proxy():
    import argparse

    parser = argparse.ArgumentParser(prog="mwibot")
    parser.add_argument("-c", "--config")
    sub = parser.add_subparsers(dest="command")
    mwibot._add_start(sub)
    return parser


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        mwibot.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "start" in out and "configure" in out


