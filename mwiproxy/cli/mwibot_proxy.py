"""`mwibot proxy … db …`: the local database proxy, with tbot's command line.

    mwibot [-c tbot.yaml] proxy --proxy=HOST:PORT --destination-dir=DIR \\
        db --port=PORT [--tunnel] [--db-user USER] [--db-name DB] SERVICE

`--proxy-server` is accepted for `--proxy`; both take a list (`a:3080,b:3080`) of
cluster processes on one storage, tried in order (the one that worked last first;
`db --spread`: new connections take them in turn). Without --proxy the `proxy_server` of the
tbot.yaml given with -c is used. `--max-connections N` caps open sessions (more callers
wait in the accept queue), SIGTERM drains for up to `--drain-timeout` (a second signal
cuts at once), `--diag-addr HOST:PORT` serves /livez, /readyz and /metrics.

Also `mwibot start database-tunnel --proxy-server … --token … --listen … --service …
--database … --username …` (the bot with one in-memory tunnel), and the runner of the
bot's `database-tunnel` services. Runnable on its own:
`python -m mwiproxy.cli.mwibot_proxy proxy …`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from mwiproxy.cli.common import add_log_flags, setup_logging


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `proxy` to mwibot's commands and serve `database-tunnel` services."""
    p = sub.add_parser("proxy", help="run a local proxy to a database behind the cluster",
                       description="Run a local proxy that carries database connections to "
                                   "the cluster proxy with the bot's credentials.")
    p.add_argument("--proxy", "--proxy-server", dest="proxy_server", default="",
                   help="the cluster proxy, host:port, or several (a:3080,b:3080: "
                   "cluster processes on one storage, with failover; default: "
                   "proxy_server of -c)")
    p.add_argument("--destination-dir", required=True,
                   help="the directory a bot `database` output keeps renewed")
    add_log_flags(p)
    kinds = p.add_subparsers(dest="proxy_kind", metavar="KIND", required=True)
    db = kinds.add_parser("db", help="a database")
    db.add_argument("--port", type=int, default=0, help="local port on 127.0.0.1 "
                    "(default: a free one, printed on start)")
    db.add_argument("--listen", default="", help="instead of --port: host:port or "
                    "unix:///path")
    db.add_argument("--tunnel", action="store_true", help="authenticated tunnel: attach the "
                    "credentials; clients connect without TLS or certificates (required "
                    "for mysql, mongodb and redis)")
    db.add_argument("-u", "--db-user", default="", help="database user (checked against "
                    "the certificate)")
    db.add_argument("-n", "--db-name", default="", help="database name (checked against "
                    "the certificate)")
    db.add_argument("--ping", action=argparse.BooleanOptionalAction, default=True,
                    help="offer the `-ping` ALPN framing, as Teleport does: the cluster "
                    "sends keepalives to idle sessions so NAT and load balancers keep "
                    "them (default: on; relayed natively, the cluster falls back to the "
                    "plain name if it lacks it)")
    db.add_argument("--spread", action="store_true",
                    help="with several cluster addresses: new connections take them in "
                    "turn (round-robin among the ones that answer; a failed one is tried "
                    "last for 5 s). Default: failover, the one that worked last first")
    db.add_argument("service", help="the database service name (as in `mwictl db ls`)")
    _add_serving_flags(db)
    db.set_defaults(func=run_proxy_db)
    if "start" in sub.choices:
        _add_start_database_tunnel(sub)


def _add_serving_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-connections", type=int, default=0, metavar="N",
                   help="at most N open connections; more callers wait (default: no cap)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="relay worker threads (native build; 0, the default: one per "
                        "core, at most 8)")
    p.add_argument("--drain-timeout", default="30s", metavar="DURATION",
                   help="on SIGTERM, how long open sessions may finish (default 30s)")
    p.add_argument("--diag-addr", default="", metavar="HOST:PORT",
                   help="serve /livez and /readyz on HOST:PORT")
    p.add_argument("--pid-file", default="", metavar="PATH",
                   help="write the process id here once listening; removed on exit")


def _add_start_database_tunnel(sub: argparse._SubParsersAction[Any]) -> None:
    from mwiproxy.cli.mwibot import add_bot_flags, start_modes

    p = start_modes(sub).add_parser(
        "database-tunnel", help="renew database credentials in memory and serve a "
        "tunnel-mode local proxy with them")
    add_bot_flags(p)
    p.add_argument("--listen", required=True, help="tcp://127.0.0.1:PORT or unix:///PATH")
    p.add_argument("--service", required=True, help="database service name")
    p.add_argument("--database", required=True, help="database name")
    p.add_argument("--username", required=True, help="database user")
    p.set_defaults(func=_start_database_tunnel)


def _start_database_tunnel(args: argparse.Namespace) -> int:
    from mwiproxy.cli.mwibot import config_from_flags, run_bot

    if getattr(args, "config", None):
        raise ValueError("use either -c FILE or the flags of a mode, not both")
    service = {"type": "database-tunnel", "listen": args.listen, "service": args.service,
               "database": args.database, "username": args.username}
    return run_bot(config_from_flags(args, service), pid_file=getattr(args, "pid_file", ""),
                   log_format=getattr(args, "log_format", "text"))


def _proxy_addr(args: argparse.Namespace) -> str:
    if args.proxy_server:
        return str(args.proxy_server)
    config = getattr(args, "config", None)
    if config:
        from mwiproxy.config.bot import load_bot_config

        cfg = load_bot_config(config)
        if cfg.proxy_server or cfg.auth_server:
            return cfg.proxy_server or cfg.auth_server
    raise SystemExit("mwibot proxy: --proxy=HOST:PORT is needed (or -c tbot.yaml with "
                     "proxy_server)")


def run_proxy_db(args: argparse.Namespace) -> int:
    import uvloop

    from mwiproxy import _native
    from mwiproxy.config.durations import parse_duration
    from mwiproxy.localproxy.creds import CredentialsError, DirectoryCredentials
    from mwiproxy.localproxy.server import LocalProxy, UnsupportedMode
    from mwiproxy.process.pidfile import PidFile

    setup_logging(getattr(args, "debug", False), getattr(args, "log_format", None))
    PidFile(args.pid_file).check()
    try:
        drain = parse_duration(args.drain_timeout).total_seconds()
    except ValueError as e:
        raise SystemExit(f"mwibot proxy: --drain-timeout: {e}") from None
    if args.max_connections < 0:
        raise SystemExit("mwibot proxy: --max-connections must be 0 (no cap) or more")
    try:
        _native.set_default_workers(args.workers)  # the loop's engines are made later
    except ValueError as e:
        raise SystemExit(f"mwibot proxy: --workers: {e}") from None
    proxy = LocalProxy(
        listen=args.listen or f"127.0.0.1:{args.port}", proxy_addr=_proxy_addr(args),
        service=args.service, credentials=DirectoryCredentials(args.destination_dir),
        tunnel=args.tunnel, database=args.db_name, username=args.db_user,
        origin=args.destination_dir, max_connections=args.max_connections,
        offer_ping=args.ping, spread=args.spread)
    try:
        uvloop.run(_serve(proxy, drain, args.diag_addr, args.pid_file,
                          named=("--listen", args.listen) if args.listen
                          else ("--port", f"127.0.0.1:{args.port}")))
    except (CredentialsError, UnsupportedMode) as e:
        print(f"ERROR: mwibot proxy: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(proxy: Any, drain_timeout: float, diag_addr: str, pid_file: str = "",
                 named: tuple[str, str] = ("--listen", "")) -> None:
    """Serve until SIGTERM/SIGINT, then drain (a second signal cuts at once); SIGHUP
    re-reads the credentials (see process/lifecycle.py)."""
    from mwiproxy.localproxy.health import serve_diagnostics
    from mwiproxy.process.binding import naming
    from mwiproxy.process.lifecycle import Signals, serve
    from mwiproxy.process.pidfile import PidFile

    signals = Signals()  # first: a SIGHUP during start-up is queued, not fatal
    registry = _measured(proxy) if diag_addr else None
    with naming(*named):  # a bind error says which flag and address
        await proxy.start()
    with naming("--diag-addr", diag_addr):
        diag = await serve_diagnostics(diag_addr, {proxy.service: proxy.readiness},
                                       registry) if diag_addr else None
    line = (f"mwibot proxy: listening on {proxy.address} for {proxy.protocol} database "
            f"{proxy.service!r} ({'tunnel' if proxy.tunnel else 'TLS pass-through'} mode)"
            + (f"; diagnostics on {diag.host}:{diag.port}" if diag else ""))
    try:
        await serve(proxy, signals, reload=proxy.reload, drain_timeout=lambda: drain_timeout,
                    pid_file=PidFile(pid_file), ready_line=line)
    finally:
        if diag is not None:
            await diag.close()


def _measured(proxy: Any) -> Any:
    """Metrics on, where they are served (else the proxy keeps its no-op ones): the
    registry for /metrics."""
    from mwiproxy.metrics.localproxy import LocalProxyMetrics
    from mwiproxy.metrics.registry import process_registry

    registry = process_registry()
    proxy.metrics = LocalProxyMetrics(registry, asyncio.get_running_loop())
    return registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mwibot")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
