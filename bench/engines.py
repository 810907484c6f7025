"""Redis and MariaDB through the whole data path, beside direct TLS and an HAProxy topology.

    python -m bench.engines [--seconds 8] [--runs 3] [--engines redis,mariadb] [--quick]
                            [--no-ping] [--out FILE]

One run starts a real Redis 7 (TLS only, client certificates from the cluster's
database-client CA, `nopass` ACL users) and a real MariaDB (users `REQUIRE SUBJECT
'/CN=alice'`), an mwiproxy cluster serving both (and the dev kit's PostgreSQL, idle),
bot credentials and a tunnel-mode local proxy per database (`mwibot proxy --tunnel … db
example-redis`; `-ping` offered, the product's default, unless --no-ping), and per
database the two HAProxies of bench/dbpath.py. Three paths each:

- direct TLS: the client speaks TLS to the database with a db_client certificate for
  alice (redis-benchmark --tls --cert …, then `AUTH alice …`; mysqlslap --ssl-cert …);
- HAProxy topology: client → service-host HAProxy → TLS with a client certificate →
  cluster-side HAProxy → database. For Redis the last leg is TLS that HAProxy originates
  with alice's db_client certificate (`server … ssl crt`), the client sends `AUTH alice`
  in plain text to the service-host HAProxy: the same legs as mwiproxy's tunnel, where the
  engine does both. MariaDB's TLS is in-protocol (the server's greeting is plain text, the
  client answers with an SSL request packet, then TLS), which HAProxy does not speak, so on
  that last leg the TLS is mysqlslap's own with alice's certificate, inside the outer TLS
  (like the PostgreSQL path in bench/pgbench_topology.py): as many TLS legs as mwiproxy's
  tunnel, but one of them end to end between the client and MariaDB;
- mwiproxy tunnel: the client speaks plain text to the local proxy; the cluster's engine
  signs in to the database (TLS with a db_client certificate).

Cells (interleaved across paths, their order alternating run by run, each repeated
--runs times after one warm-up pass, medians reported): Redis SET and GET, 50 clients, no pipelining (redis-benchmark, random
keys); MariaDB primary-key selects, 1 and 16 clients (mysqlslap). See bench/engineload.py.
If the tree has no engine for a protocol yet, its mwiproxy path is skipped and the report
says why (the cluster's own refusal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mwiproxy.devkit import mariadb, redis
from mwiproxy.devkit.topology import CLUSTER_YAML, Topology, start_topology

from . import dbpath
from .dbpath import db_client_cert, db_server_ca, first_line, start_haproxies, stop_all
from .engineload import (
    MYSQLSLAP,
    REDIS_BENCHMARK,
    Cell,
    Runner,
    Sample,
    Target,
    mariadb_cells,
    point_select_sql,
    redis_cells,
    seed_sql,
)

ENGINES = ("redis", "mariadb")
SERVICES = {"redis": redis.SERVICE, "mariadb": mariadb.SERVICE}
PROTOCOLS = {"redis": "redis", "mariadb": "mysql"}
DIRECT, HAPROXY, MWIPROXY = "direct TLS", "HAProxy topology", "mwiproxy tunnel"
USER, SCHEMA = "alice", "example-db"
# Redis ACL users are nopass (the certificate is the credential): AUTH only picks the user
REDIS_AUTH = ("--user", USER, "-a", "mwiproxy-bench")
# the proxy processes of each path, in Target.pids order (start_haproxies: service host first)
MWIPROXY_PROCESSES = ("local proxy", "cluster")
HAPROXY_PROCESSES = ("service-host HAProxy", "cluster-side HAProxy")


@dataclass
class Bench:
    """Per engine: its cells, its paths, and why a path is missing (if one is)."""

    cells: dict[str, list[Cell]] = field(default_factory=dict)
    targets: dict[str, list[Target]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    workers: int = 0  # relay workers of the cluster and the local proxies (0: per core)


def cluster_template(engines: tuple[str, ...], ports: dict[str, int], workers: int = 0,
                     query_audit: bool = True) -> str:
    """The dev kit's cluster.yaml (PostgreSQL) plus the engines' databases, with
    `proxy.workers` set to `workers` and `audit.queries` to `query_audit`."""
    extra = "".join(f"  - name: {SERVICES[e]}\n    protocol: {PROTOCOLS[e]}\n"
                    f"    uri: 127.0.0.1:{ports[e]}\n    static_labels: {{env: dev}}\n"
                    for e in engines)
    base = CLUSTER_YAML.replace("  ping_interval: 1s\n",
                                f"  ping_interval: 1s\n  workers: {workers}\n")
    assert base != CLUSTER_YAML, "the dev kit's cluster.yaml changed shape"
    audit = "" if query_audit else "audit:\n  queries: false\n"
    return base.replace("databases:\n", audit + "databases:\n") + extra


def _tunnel(topo: Topology, engine: str, ping: bool, workers: int = 0) -> Target | str:
    """The mwiproxy path, or why there is none: the cluster's refusal when it has no
    engine for the protocol (seen by a one-request probe)."""
    service = SERVICES[engine]
    database = "" if engine == "redis" else SCHEMA
    out = topo.bot_output(f"bench-{engine}", ttl="1h", service=service, database=database)
    lp = topo.local_proxy(out, tunnel=True, service=service,
                          extra=(f"--workers={workers}",) + (() if ping else ("--no-ping",)))
    assert topo.cluster.proc is not None
    target = Target(MWIPROXY, lp.port, () if engine == "redis" else (
        "-u", USER, "--skip-ssl"), [lp.proc.pid, topo.cluster.proc.pid], MWIPROXY_PROCESSES)
    if engine == "redis":
        probe = subprocess.run([redis.REDIS_CLI, "-h", "127.0.0.1", "-p", str(lp.port),
                                "PING"], capture_output=True, text=True, timeout=60)
        ok = probe.stdout.strip() == "PONG"
    else:
        probe = subprocess.run([mariadb.CLIENT, "--no-defaults", "-h", "127.0.0.1", "-P",
                                str(lp.port), "-u", USER, "--skip-ssl", SCHEMA, "-N", "-e",
                                "SELECT 1"], capture_output=True, text=True, timeout=60)
        ok = probe.returncode == 0 and probe.stdout.strip() == "1"
    if ok:
        return target
    said = (probe.stdout + probe.stderr).strip()
    if "has no engine" in said:
        return f"no {PROTOCOLS[engine]} engine in this tree (the cluster answered: {said})"
    raise RuntimeError(f"the mwiproxy path to {service} does not work: {said}\n"
                       f"{lp.log.read_text()[-2000:]}")


def _redis(topo: Topology, server: redis.RedisServer, ca: str, crt: str, key: str,
           ping: bool, stack: ExitStack, bench: Bench) -> None:
    stack.callback(server.stop)
    redis.start_redis(server, topo.cluster, topo.root)
    pem = dbpath.write_secret(topo.root / "alice-redis.pem",
                              Path(crt).read_bytes() + Path(key).read_bytes())
    ha_port, procs = start_haproxies(
        topo.root, f"127.0.0.1:{server.port} ssl crt {pem} ca-file {ca} verify required "
        "sni str(localhost) verifyhost localhost", "redis")
    stack.callback(stop_all, procs)
    tls = ("--tls", "--sni", "localhost", "--cacert", ca, "--cert", crt, "--key", key)
    targets = [Target(DIRECT, server.port, (*tls, *REDIS_AUTH)),
               Target(HAPROXY, ha_port, REDIS_AUTH, [p.pid for p in procs], HAPROXY_PROCESSES)]
    tunnel = _tunnel(topo, "redis", ping, bench.workers)
    if isinstance(tunnel, str):
        bench.skipped["redis"] = tunnel
    else:
        targets.append(tunnel)
    bench.targets["redis"] = targets
    bench.cells["redis"] = redis_cells()


def _mariadb(topo: Topology, server: mariadb.MariaDBServer, ca: str, crt: str, key: str,
             ping: bool, stack: ExitStack, bench: Bench) -> None:
    stack.callback(server.stop)
    mariadb.start_mariadb(server, topo.cluster, topo.root)
    server.sql(seed_sql(), SCHEMA)
    queries = topo.root / "point-select.sql"
    queries.write_text(point_select_sql())
    ha_port, procs = start_haproxies(topo.root, f"127.0.0.1:{server.port}", "mariadb")
    stack.callback(stop_all, procs)
    # the server certificate names localhost and 127.0.0.1: verified as mwiproxy does
    tls = ("-u", USER, f"--ssl-ca={ca}", f"--ssl-cert={crt}", f"--ssl-key={key}",
           "--ssl-verify-server-cert")
    targets = [Target(DIRECT, server.port, tls),
               Target(HAPROXY, ha_port, tls, [p.pid for p in procs], HAPROXY_PROCESSES)]
    tunnel = _tunnel(topo, "mariadb", ping, bench.workers)
    if isinstance(tunnel, str):
        bench.skipped["mariadb"] = tunnel
    else:
        targets.append(tunnel)
    bench.targets["mariadb"] = targets
    bench.cells["mariadb"] = mariadb_cells(str(queries))


@contextmanager
def topology(root: Path, engines: tuple[str, ...], ping: bool = True, workers: int = 0,
             query_audit: bool = True
             ) -> Iterator[Bench]:
    rs = redis.RedisServer() if "redis" in engines else None
    ms = mariadb.MariaDBServer() if "mariadb" in engines else None
    ports = {e: s.port for e, s in (("redis", rs), ("mariadb", ms)) if s is not None}
    bench = Bench(workers=workers)
    with start_topology(root, cluster_template(engines, ports, workers, query_audit)) as topo, ExitStack() as stack:
        crt, key = db_client_cert(topo.cluster.data_dir, root, USER)
        ca = db_server_ca(topo.cluster.data_dir, root)
        for engine in engines:
            if engine == "redis" and rs is not None:
                _redis(topo, rs, ca, crt, key, ping, stack, bench)
            elif ms is not None:
                _mariadb(topo, ms, ca, crt, key, ping, stack, bench)
        yield bench


# -- measuring and the report -----------------------------------------------------------

Results = dict[tuple[str, str, str], list[Sample]]  # (engine, cell, path) -> samples


def measure(bench: Bench, seconds: float, runs: int, warm_up: bool = True) -> Results:
    runner = Runner(seconds)
    if warm_up:
        for engine, cells in bench.cells.items():
            runner.warm_up(bench.targets[engine], cells)
    results: Results = {}
    for run in range(runs):
        for engine, cells in bench.cells.items():
            for cell in cells:
                # the paths' order alternates run by run (no path always first or last)
                targets = bench.targets[engine]
                for target in targets if run % 2 == 0 else targets[::-1]:
                    s = runner.run(target, cell)
                    results.setdefault((engine, cell.name, target.name), []).append(s)
                    print(f"run {run + 1}/{runs} {engine:7} {cell.name:26} {target.name:17} "
                          f"rps={s.rps:9.1f} lat={s.lat_ms:7.3f}ms p99={s.p99_ms:7.3f}ms "
                          f"cpu/req={s.cpu_us:6.1f}us", flush=True)
    return results


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def _ms(value: float) -> str:
    return "–" if value != value else f"{value:.3f}"


def _each(samples: list[Sample]) -> tuple[float, ...]:
    """The median CPU per request of each proxy process."""
    return tuple(statistics.median(each) for each in zip(*(s.cpu_each for s in samples),
                                                          strict=True))


def _cpu(samples: list[Sample]) -> str:
    each = _each(samples)
    return f"{sum(each):.1f} ({' + '.join(f'{c:.1f}' for c in each)})" if each else "–"


def table(bench: Bench, results: Results) -> str:
    lines = ["| engine | cell | path | req/s | latency ms | p99 ms | × direct | × HAProxy | "
             "proxy CPU µs/req (each process) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for engine, cells in bench.cells.items():
        for cell in cells:
            direct = _median(results[(engine, cell.name, DIRECT)], "rps")
            haproxy = _median(results[(engine, cell.name, HAPROXY)], "rps")
            for target in bench.targets[engine]:
                s = results[(engine, cell.name, target.name)]
                rps = _median(s, "rps")
                lines.append(f"| {engine} | {cell.name} | {target.name} | {rps:.0f} | "
                             f"{_ms(_median(s, 'lat_ms'))} | {_ms(_median(s, 'p99_ms'))} | "
                             f"{rps / direct:.2f} | {rps / haproxy:.2f} | "
                             f"{_cpu(s)} |")
    return "\n".join(lines)


def ratios(bench: Bench, results: Results) -> str:
    """mwiproxy ÷ HAProxy and mwiproxy ÷ direct (throughput), and proxy CPU per request
    mwiproxy ÷ HAProxy, one line per cell."""
    lines = []
    for engine, cells in bench.cells.items():
        if engine in bench.skipped:
            lines.append(f"- {engine}: mwiproxy path skipped: {bench.skipped[engine]}")
            continue
        for cell in cells:
            m, h, d = (results[(engine, cell.name, p)] for p in (MWIPROXY, HAPROXY, DIRECT))
            mc, hc = sum(_each(m)), sum(_each(h))
            lines.append(
                f"- {engine} {cell.name}: mwiproxy/HAProxy {_median(m, 'rps') / _median(h, 'rps'):.2f}×, "
                f"mwiproxy/direct {_median(m, 'rps') / _median(d, 'rps'):.2f}×; proxy CPU per "
                f"request {mc:.1f} vs {hc:.1f} µs ({mc / hc:.2f}×)")
    return "\n".join(lines)


def samples_json(bench: Bench, results: Results, command: str) -> dict[str, object]:
    """Every sample of every cell and path, with the command and the machine."""
    return {"command": command, "machine": machine(), "skipped": bench.skipped,
            "cells": [{"engine": engine, "cell": cell.name, "path": t.name,
                       "processes": list(t.processes),
                       "samples": [{"rps": s.rps, "lat_ms": s.lat_ms,
                                    "p99_ms": None if s.p99_ms != s.p99_ms else s.p99_ms,
                                    "cpu_us_each": list(s.cpu_each)}
                                   for s in results[(engine, cell.name, t.name)]]}
                      for engine, cells in bench.cells.items() for cell in cells
                      for t in bench.targets[engine]]}


def cpu_legend() -> str:
    return (f"Proxy CPU per request: utime + stime from /proc over the run ÷ requests; "
            f"mwiproxy = {' + '.join(MWIPROXY_PROCESSES)}, HAProxy topology = "
            f"{' + '.join(HAPROXY_PROCESSES)}.")


def machine() -> str:
    return dbpath.machine(first_line(REDIS_BENCHMARK, "--version"),
                          first_line(redis.REDIS_SERVER, "--version"),
                          first_line(MYSQLSLAP, "--version"),
                          first_line(str(mariadb.MARIADBD), "--version"),
                          first_line("haproxy", "-v"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8, help="duration of each cell")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="comma-separated: redis, mariadb")
    ap.add_argument("--no-ping", action="store_true",
                    help="local proxies without `-ping` (default: offered, as the product)")
    ap.add_argument("--workers", type=int, default=0,
                    help="relay workers of the cluster and the local proxies (proxy.workers, "
                    "--workers; default 0: one per core)")
    ap.add_argument("--no-query-audit", action="store_true",
                    help="the cluster with `audit.queries: false` (the relay alone; default: "
                    "every command audited, as the product)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke: one run of each cell at the warm-up size (a few thousand "
                    "requests), no warm-up pass; --seconds and --runs are ignored")
    ap.add_argument("--out", default="", help="also write the report (markdown) here")
    ap.add_argument("--json", default="", help="also write every sample (JSON) here")
    args = ap.parse_args(argv)
    engines = tuple(e for e in args.engines.split(",") if e)
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
    missing = [e for e, ok in (("redis", redis.available()), ("mariadb", mariadb.available()))
               if e in engines and not ok]
    if missing:
        print(f"not installed: {', '.join(missing)} (scripts/install-deps --bench)",
              file=sys.stderr)
        return 1
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="mwi-engines-") as tmp, \
            topology(Path(tmp), engines, not args.no_ping, args.workers,
                     not args.no_query_audit) as bench:
        results = measure(bench, args.seconds, runs, warm_up=not args.quick)
    flags = f" --engines {args.engines}" * (engines != ENGINES) + " --no-ping" * args.no_ping \
        + f" --workers {args.workers}" * (args.workers != 0) \
        + " --no-query-audit" * args.no_query_audit
    sizing = " --quick" if args.quick else f" --seconds {args.seconds:g} --runs {args.runs}"
    command = f"python -m bench.engines{sizing}{flags}"
    report = (f"{table(bench, results)}\n\n{cpu_legend()}\n\n{ratios(bench, results)}\n\n"
              f"{machine()}\n\n"
              f"Command: `{command}`\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(samples_json(bench, results, command), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
