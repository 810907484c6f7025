"""`mwibot`: the bot (credential renewer) and its local database proxy.

    mwibot start -c tbot.yaml [--oneshot] [--diag-addr HOST:PORT]   (or mwibot -c FILE start)
    mwibot start database --proxy-server HOST:PORT --token TOKEN --ca-pin sha256:... \\
        --destination DIR --service NAME [--database DB] [--username USER] [--format tls]
    mwibot start identity --proxy-server ... --token ... --destination DIR
    mwibot configure database|identity ...   prints the equivalent tbot.yaml

Flag names are tbot's. The flag forms build a tbot.yaml document and decode it with the
same strict decoder as a file, so both forms accept and refuse exactly the same things.

Extension point: `mwiproxy.cli.mwibot_proxy.register(sub)` (the data path) adds more
commands. Each command sets `func` (args -> exit code) with `set_defaults`; `start`
modes are added to `start_modes(sub)`, and `add_bot_flags` / `config_from_flags` /
`run_bot` let a mode reuse the connection flags and the renewer.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from typing import Any

from mwiproxy.cli.common import (
    add_version,
    add_version_command,
    print_version,
    run_cli,
    setup_logging,
)
from mwiproxy.process import logs

Handler = Callable[[argparse.Namespace], int]
FORMATS = ("", "tls", "mongo", "cockroach")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mwibot",
        description="Join an mwiproxy cluster, keep short-lived database credentials renewed "
                    "and run a local database proxy.")
    add_version(p, "mwibot")
    p.add_argument("-c", "--config", help="tbot.yaml (also accepted after `start`)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_start(sub)
    _add_configure(sub)
    add_version_command(sub).set_defaults(func=lambda a: print_version("mwibot", a.format))
    try:
        from mwiproxy.cli import mwibot_proxy
    except ImportError:
        mwibot_proxy = None  # type: ignore[assignment]
    if mwibot_proxy is not None:
        mwibot_proxy.register(sub)
    return p


def start_modes(sub: argparse._SubParsersAction[Any]) -> argparse._SubParsersAction[Any]:
    """The subcommands of `mwibot start` (database, identity, ...), to add more modes."""
    start = sub.choices["start"]
    return next(a for a in start._actions if isinstance(a, argparse._SubParsersAction))


def _add_start(sub: argparse._SubParsersAction[Any]) -> None:
    start = sub.add_parser("start", help="run the bot (from a tbot.yaml with -c, or flags)",
                           description="Run the bot: -c tbot.yaml, or a mode with flags.")
    start.add_argument("-c", "--config", default=argparse.SUPPRESS, help="tbot.yaml (version v2)")
    _add_run_flags(start)
    start.set_defaults(func=_start_from_file)
    modes = start.add_subparsers(dest="mode", metavar="MODE")
    db = modes.add_parser("database", help="renew database credentials into a directory")
    add_bot_flags(db)
    _add_database_flags(db)
    db.set_defaults(func=lambda a: _start_from_flags(a, _database_service(a)))
    ident = modes.add_parser("identity", help="renew the bot identity into a directory")
    add_bot_flags(ident)
    ident.add_argument("--destination", required=True, help="output directory")
    ident.set_defaults(func=lambda a: _start_from_flags(a, _identity_service(a)))


def _add_configure(sub: argparse._SubParsersAction[Any]) -> None:
    conf = sub.add_parser("configure", help="print the tbot.yaml equivalent to flags")
    modes = conf.add_subparsers(dest="mode", metavar="MODE", required=True)
    db = modes.add_parser("database", help="a database output")
    add_bot_flags(db)
    _add_database_flags(db)
    db.add_argument("-o", "--output", help="write the YAML to this file (default: stdout)")
    db.set_defaults(func=lambda a: _configure(a, _database_service(a)))
    ident = modes.add_parser("identity", help="an identity output")
    add_bot_flags(ident)
    ident.add_argument("--destination", required=True, help="output directory")
    ident.add_argument("-o", "--output", help="write the YAML to this file (default: stdout)")
    ident.set_defaults(func=lambda a: _configure(a, _identity_service(a)))


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    # Suppressed defaults: given before or after the mode (`start --oneshot database`,
    # `start database --oneshot`), the flag is kept; readers use getattr with a default.
    p.add_argument("--oneshot", action="store_true", default=argparse.SUPPRESS,
                   help="write the outputs once and exit")
    p.add_argument("--diag-addr", default=argparse.SUPPRESS,
                   help="serve /livez /readyz /metrics on HOST:PORT")
    p.add_argument("-d", "--debug", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")
    p.add_argument("--log-format", choices=list(logs.FORMATS), default=argparse.SUPPRESS,
                   help="the process log: text (default) or json, one object per line "
                        "(tbot's flag)")
    p.add_argument("--pid-file", default=argparse.SUPPRESS, metavar="PATH",
                   help="write the process id here once running; removed on exit")


def add_bot_flags(p: argparse.ArgumentParser) -> None:
    """tbot's connection, onboarding and lifetime flags."""
    p.add_argument("--proxy-server", default="", help="cluster proxy HOST:PORT, or several "
                   "(A:3080,B:3080: cluster processes on one storage, tried in order)")
    p.add_argument("--auth-server", default="", help="auth server HOST:PORT (instead of proxy)")
    p.add_argument("--join-method", default="token", help="only token is supported")
    p.add_argument("--token", default="", help="join token, or an absolute path to a file")
    p.add_argument("--ca-pin", action="append", default=[], help="sha256:<hex> (repeatable)")
    p.add_argument("--ca-path", default="", help="PEM file with the cluster's host CA")
    p.add_argument("--insecure", action="store_true", help="do not verify the cluster on join")
    p.add_argument("--storage", "--data-dir", dest="storage", default="",
                   help="directory for the bot's own identity (default /var/lib/mwibot)")
    p.add_argument("--credential-ttl", "--certificate-ttl", dest="credential_ttl", default="",
                   help="certificate lifetime (default 1h)")
    p.add_argument("--renewal-interval", default="", help="renewal interval (default 20m)")
    _add_run_flags(p)


def _add_database_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--destination", required=True, help="output directory")
    p.add_argument("--service", required=True, help="database service name")
    p.add_argument("--database", default="", help="database name")
    p.add_argument("--username", default="", help="database user")
    p.add_argument("--format", default="", choices=FORMATS, help="extra files: tls, mongo, cockroach")
    p.add_argument("--reload-pid-file", default="", help="signal this pid after each renewal")
    p.add_argument("--reload-signal", default="", help="signal to send (default HUP)")
    p.add_argument("--reload-command", default="", help="run this command after each renewal")


def _database_service(a: argparse.Namespace) -> dict[str, Any]:
    svc: dict[str, Any] = {"type": "database", "destination": a.destination,
                           "service": a.service}
    for key in ("database", "username", "format"):
        if getattr(a, key):
            svc[key] = getattr(a, key)
    reload: dict[str, Any] = {}
    if a.reload_pid_file:
        reload["pid_file"] = a.reload_pid_file
    if a.reload_signal:
        reload["signal"] = a.reload_signal
    if a.reload_command:
        reload["command"] = shlex.split(a.reload_command)
    if reload:
        svc["reload"] = reload
    return svc


def _identity_service(a: argparse.Namespace) -> dict[str, Any]:
    return {"type": "identity", "destination": a.destination}


def config_document(a: argparse.Namespace, service: dict[str, Any]) -> dict[str, Any]:
    """The tbot.yaml document the flags stand for."""
    doc: dict[str, Any] = {"version": "v2"}
    for key in ("proxy_server", "auth_server", "diag_addr", "credential_ttl",
                "renewal_interval"):
        if getattr(a, key, ""):
            doc[key] = getattr(a, key)
    onboarding: dict[str, Any] = {"join_method": a.join_method}
    if a.token:
        onboarding["token"] = a.token
    if a.ca_pin:
        onboarding["ca_pins"] = a.ca_pin
    if a.ca_path:
        onboarding["ca_path"] = a.ca_path
    doc["onboarding"] = onboarding
    if a.storage:
        doc["storage"] = {"type": "directory", "path": a.storage}
    for key in ("insecure", "oneshot", "debug"):
        if getattr(a, key, False):
            doc[key] = True
    doc["services"] = [service]
    return doc


def config_from_flags(a: argparse.Namespace, service: dict[str, Any]) -> Any:
    """A checked BotConfig from flags; errors name the flag, not a YAML line."""
    import yaml

    from mwiproxy.config.bot import parse_bot_config
    from mwiproxy.config.loader import ConfigError, load_yaml_documents

    text = yaml.safe_dump(config_document(a, service), sort_keys=False)
    try:
        return parse_bot_config(load_yaml_documents(text, "flags")[0], "flags")
    except ConfigError as e:
        if e.key:
            raise ConfigError(e.message, key=_flag_for(e.key)) from None
        raise ConfigError(e.message.replace("set proxy_server (or auth_server)",
                                            "--proxy-server (or --auth-server) is required")
                          ) from None


def _flag_for(key: str) -> str:
    k = re.sub(r"\[\d+\]", "", key).removeprefix("services.").removeprefix("onboarding.")
    if k == "reload":
        return "--reload-pid-file or --reload-command"
    k = {"ca_pins": "ca_pin", "destination.path": "destination", "storage.path": "storage"
         }.get(k, k)
    return "--" + k.replace(".", "-").replace("_", "-")


# --- commands ----------------------------------------------------------------------------


def _configure(a: argparse.Namespace, service: dict[str, Any]) -> int:
    text = config_from_flags(a, service).to_yaml()
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {a.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _start_from_file(a: argparse.Namespace) -> int:
    from mwiproxy.config.bot import load_bot_config

    if not a.config:
        raise ValueError("give a config file (mwibot start -c tbot.yaml) or a mode "
                         "(mwibot start database --help)")

    def load() -> Any:
        config = load_bot_config(a.config)
        config.oneshot = config.oneshot or getattr(a, "oneshot", False)
        config.diag_addr = getattr(a, "diag_addr", "") or config.diag_addr
        config.debug = config.debug or getattr(a, "debug", False)
        return config

    return run_bot(load(), reload=load, pid_file=getattr(a, "pid_file", ""),
                   log_format=getattr(a, "log_format", "text"))


def _start_from_flags(a: argparse.Namespace, service: dict[str, Any]) -> int:
    if getattr(a, "config", None):
        raise ValueError("use either -c FILE or the flags of a mode, not both")
    return run_bot(config_from_flags(a, service), pid_file=getattr(a, "pid_file", ""),
                   log_format=getattr(a, "log_format", "text"))


def run_bot(config: Any, reload: Callable[[], Any] | None = None, pid_file: str = "",
            log_format: str = "text") -> int:
    """Run the renewer for a checked BotConfig: oneshot, or the daemon until signalled."""
    import uvloop

    from mwiproxy.bot.daemon import BotDaemon, run_oneshot
    from mwiproxy.bot.tunnels import check_tunnels_servable
    from mwiproxy.process.pidfile import PidFile

    setup_logging(config.debug, log_format)
    runner = tunnel_runner()
    check_tunnels_servable(config, runner)
    if config.oneshot:
        uvloop.run(run_oneshot(config))
    else:
        PidFile(pid_file).check()
        uvloop.run(BotDaemon(config, reload, pid_file, tunnel_runner=runner).run())
    return 0


def tunnel_runner() -> Any:
    """The local proxy's database-tunnel server, handed to the bot (which sits below the
    local proxy and must not import it); None in a build without the local proxy."""
    try:
        from mwiproxy.localproxy.tunnel import serve_database_tunnel
    except ImportError:
        return None
    return serve_database_tunnel


def _guarded(handler: Handler, args: argparse.Namespace) -> int:
    """Expected failures print one `ERROR:` line and exit 1, never a traceback."""
    from mwiproxy.bot.cluster import OnboardingError
    from mwiproxy.bot.destinations import DestinationError
    from mwiproxy.bot.keeper import BotStopped
    from mwiproxy.bot.state import StateError

    def call() -> int:
        try:
            return handler(args)
        except (BotStopped, OnboardingError, StateError, DestinationError) as e:
            raise ValueError(str(e)) from None

    return run_cli(call)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return _guarded(func, args)


if __name__ == "__main__":
    sys.exit(main())
