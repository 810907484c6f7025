"""`mwiproxy`: the cluster server."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mwiproxy.cli.common import (
    add_log_flags,
    add_version,
    add_version_command,
    print_version,
    run_cli,
    setup_logging,
)

if TYPE_CHECKING:
    from mwiproxy.config.cluster import ClusterConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mwiproxy",
        description="mwiproxy cluster: auth service, cluster proxy and database engines.")
    add_version(p, "mwiproxy")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the cluster (embedded default without -c)")
    start.add_argument("-c", "--config", help="cluster.yaml (default: the embedded default)")
    start.add_argument("--data-dir", help="override data_dir")
    start.add_argument("--listen-addr", help="override proxy.listen_addr (host:port)")
    start.add_argument("--cluster-name", help="override cluster_name")
    start.add_argument("--roles", default="auth,proxy,db",
                       help="what this process runs: auth,proxy,db (the default: everything "
                            "in one process) or db (a database agent that joins a cluster)")
    start.add_argument("--auth-server", action="append", default=[],
                       help="db role: the cluster proxy to join (db_service.auth_server); "
                       "several cluster processes on one storage as a:3080,b:3080 or a "
                       "repeated flag, tried in order with failover")
    start.add_argument("--token", help="db role: a join token from `mwictl tokens add "
                       "--type=db`, or the path of a file holding it")
    start.add_argument("--ca-pin", action="append", default=[],
                       help="db role: the cluster's CA pin (`mwictl status`); repeatable")
    start.add_argument("--pid-file", default="", metavar="PATH",
                       help="write the process id here once serving; removed on exit "
                            "(systemd's PIDFile=)")
    add_log_flags(start, debug_help="debug logging (else log.level of the config)")
    add_version_command(sub)
    return p


ROLES = {"auth", "proxy", "db"}


def _roles(text: str) -> set[str]:
    roles = {r.strip() for r in text.split(",") if r.strip()}
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"--roles: unknown role(s) {', '.join(sorted(unknown))} "
                         "(known: auth, proxy, db)")
    if roles == {"db"} or roles == ROLES:
        return roles
    raise ValueError("--roles: run either auth,proxy,db (one process) or db (an agent); "
                     "auth and proxy run together, and a cluster without the db role "
                     "is one with no databases in its config")


def _load(args: argparse.Namespace) -> ClusterConfig:
    """The config file with the command line's overrides: at start and on each SIGHUP."""
    from mwiproxy.config.cluster import ClusterConfig, load_cluster_config

    cfg = load_cluster_config(args.config) if args.config else ClusterConfig.default(
        data_dir=args.data_dir)
    if args.data_dir:
        cfg.data_dir = args.data_dir
        cfg.storage.path = ""
    if args.listen_addr:
        if cfg.proxy.public_addr == cfg.proxy.listen_addr:
            cfg.proxy.public_addr = args.listen_addr
        cfg.proxy.listen_addr = args.listen_addr
    if args.cluster_name:
        cfg.cluster_name = args.cluster_name
    if args.debug:
        cfg.log.level = "debug"
    if args.log_format:
        cfg.log.format = args.log_format
    agent = cfg.db_service
    if args.auth_server:
        agent.auth_server = ",".join(args.auth_server)
    if args.token:
        agent.token = args.token
    agent.ca_pins += args.ca_pin
    if _roles(args.roles) == {"db"}:
        if args.listen_addr:
            agent.listen_addr = args.listen_addr
        agent.validate()
    return cfg


def _start(args: argparse.Namespace) -> int:
    from mwiproxy.process.logs import set_level
    from mwiproxy.process.pidfile import PidFile

    roles = _roles(args.roles)
    setup_logging(args.debug, args.log_format)  # the config's own warnings, formatted
    cfg = _load(args)
    setup_logging(args.debug, cfg.log.format)
    set_level(cfg.log.level)
    PidFile(args.pid_file).check()  # before anything starts: one named there still runs

    import uvloop

    if roles == {"db"}:
        from mwiproxy.dbagent.agent import run as run_agent

        uvloop.run(run_agent(cfg, reload=lambda: _load(args), pid_file=args.pid_file))
        return 0
    from mwiproxy.server import run

    uvloop.run(run(cfg, reload=lambda: _load(args), pid_file=args.pid_file))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        return print_version("mwiproxy", args.format)
    return run_cli(lambda: _start(args))


if __name__ == "__main__":
    sys.exit(main())
