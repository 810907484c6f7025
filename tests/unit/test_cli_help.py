"""Every option and subcommand of mwiproxy, mwictl and mwibot has help text; `version`
prints the version, Python and the native core; a bind error names its setting."""

from __future__ import annotations

import argparse
import errno
import json
import platform
import socket
from collections.abc import Iterator

import pytest

import mwiproxy
from mwiproxy import _native
from mwiproxy.cli import mwibot, mwictl
from mwiproxy.cli import mwiproxy as mwiproxy_cli
from mwiproxy.process.binding import BindError, naming

PARSERS = {"mwiproxy": mwiproxy_cli.build_parser, "mwictl": mwictl.build_parser,
           "mwibot": mwibot.build_parser}


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str | None]]:
    """(where, help) for every option, positional and subcommand under `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from walk(sub, f"{path} {name}")
            continue
        name = "/".join(action.option_strings) or action.dest
        yield f"{path} {name}", action.help


def test_the_walk_finds_what_lacks_help():
    p = argparse.ArgumentParser()
    p.add_argument("--bare")
    p.add_subparsers().add_parser("quiet").add_argument("thing", help="ok")
    assert [w for w, text in walk(p, "x") if not text] == ["x --bare", "x quiet"]


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_option_and_subcommand_has_help(prog):
    missing = [where for where, text in walk(PARSERS[prog](), prog)
               if not text or text == argparse.SUPPRESS]
    assert missing == []


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_version_command(prog, capsys):
    main = {"mwiproxy": mwiproxy_cli.main, "mwictl": mwictl.main, "mwibot": mwibot.main}[prog]
    assert main(["version"]) == 0
    text = capsys.readouterr().out
    assert f"{prog} {mwiproxy.__version__}" in text
    assert f"Python {platform.python_version()}" in text
    assert f"native core: {'yes' if _native.NATIVE else 'no'}" in text
    assert main(["version", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "program": prog, "version": mwiproxy.__version__,
        "python": platform.python_version(), "native": _native.NATIVE}


def test_log_format_flag_on_every_long_running_command():
    p = mwiproxy_cli.build_parser()
    assert p.parse_args(["start", "--log-format", "json"]).log_format == "json"
    b = mwibot.build_parser()
    assert b.parse_args(["start", "-c", "x", "--log-format", "json"]).log_format == "json"
    args = b.parse_args(["proxy", "--destination-dir", "d", "--log-format", "json",
                         "db", "svc"])
    assert args.log_format == "json"
    assert mwictl.build_parser().parse_args(["--log-format", "json", "status"]).log_format \
        == "json"
    with pytest.raises(SystemExit):
        p.parse_args(["start", "--log-format", "xml"])


def test_a_bind_error_names_the_setting_and_address():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    addr = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        with pytest.raises(BindError) as info, naming("diag_addr", addr):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", taken.getsockname()[1]))
            finally:
                s.close()
    finally:
        taken.close()
    assert str(info.value) == f"diag_addr {addr}: address already in use"
    assert info.value.errno == errno.EADDRINUSE


def test_other_errors_pass_through_unnamed():
    with pytest.raises(OSError) as info, naming("diag_addr", "x:1"):
        raise OSError(errno.ENOENT, "No such file")
    assert not isinstance(info.value, BindError)
