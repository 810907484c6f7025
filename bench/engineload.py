"""The load of `python -m bench.engines`: redis-benchmark (GET, SET) and mysqlslap
(point selects), each a C client, so what is measured is the path rather than the client.

Neither tool runs for a given time; each takes a request count. A warm-up pass (small,
fixed count, also filling the keys GET reads) gives each path's rate, and every measured
run asks for `rate × seconds` requests, the rate updated from each run.

A sample: requests per second, latency (redis-benchmark: p50/p99 of its histogram;
mysqlslap has no per-query times: the mean, clients ÷ rate, and no p99), and the CPU per
request of the proxy processes on the path (utime + stime from /proc, both proxies).
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
from dataclasses import dataclass, field

from .dbpath import cpu_ticks, cpu_us_per

REDIS_BENCHMARK = os.environ.get("MWI_REDIS_BENCHMARK", "redis-benchmark")
MYSQLSLAP = os.environ.get("MWI_MYSQLSLAP", "mysqlslap")
KEYSPACE = 100_000  # redis-benchmark -r: random keys among these
ROWS = 10_000  # rows of the point-select table
QUERIES = 500  # distinct point selects the mysqlslap query file cycles through
WARMUP = {"redis": 5_000, "mariadb": 2_000}
MIN_REQUESTS = 1_000


@dataclass(frozen=True)
class Cell:
    engine: str  # redis | mariadb
    name: str
    clients: int
    test: str  # redis-benchmark -t; mysqlslap: the query file


@dataclass
class Target:
    name: str
    port: int
    args: tuple[str, ...]  # the client's options for this path (TLS, user)
    pids: list[int] = field(default_factory=list)  # the proxy processes on this path
    processes: tuple[str, ...] = ()  # their names, in the same order


@dataclass
class Sample:
    rps: float
    lat_ms: float  # p50 (redis-benchmark) or mean (mysqlslap)
    p99_ms: float  # NaN where the client does not report it
    cpu_each: tuple[float, ...] = ()  # CPU µs per request of each proxy process

    @property
    def cpu_us(self) -> float:
        """Proxy CPU per request, all the path's proxy processes together."""
        return sum(self.cpu_each)


def _ticks(target: Target) -> list[int]:
    return [cpu_ticks([pid]) for pid in target.pids]


def _per_request(target: Target, before: list[int], requests: int) -> tuple[float, ...]:
    return tuple(cpu_us_per(after - was, requests)
                 for after, was in zip(_ticks(target), before, strict=True))


def redis_cells(clients: int = 50) -> list[Cell]:
    # SET first: it fills the keys GET reads
    return [Cell("redis", f"SET, {clients} clients", clients, "set"),
            Cell("redis", f"GET, {clients} clients", clients, "get")]


def mariadb_cells(query_file: str) -> list[Cell]:
    return [Cell("mariadb", "point select, 1 client", 1, query_file),
            Cell("mariadb", "point select, 16 clients", 16, query_file)]


# -- Redis ------------------------------------------------------------------------------


def redis_command(target: Target, cell: Cell, requests: int) -> list[str]:
    return [REDIS_BENCHMARK, "-h", "127.0.0.1", "-p", str(target.port), "-c",
            str(cell.clients), "-n", str(requests), "-t", cell.test, "-r", str(KEYSPACE),
            "-P", "1", "--csv", *target.args]


def parse_redis_csv(text: str) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of the one test in redis-benchmark's --csv output."""
    rows = list(csv.DictReader(io.StringIO(text.strip())))
    if len(rows) != 1 or "rps" not in rows[0]:
        raise ValueError(f"unexpected redis-benchmark output: {text[-500:]!r}")
    row = rows[0]
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def run_redis(target: Target, cell: Cell, requests: int) -> Sample:
    before = _ticks(target)
    res = subprocess.run(redis_command(target, cell, requests), capture_output=True,
                         text=True, timeout=600)
    cpu = _per_request(target, before, requests)
    if res.returncode != 0 or "rps" not in res.stdout:
        raise RuntimeError(f"redis-benchmark failed on {target.name}: "
                           f"{(res.stdout + res.stderr)[-2000:]}")
    rps, p50, p99 = parse_redis_csv(res.stdout)
    return Sample(rps, p50, p99, cpu)


# -- MariaDB ----------------------------------------------------------------------------


def point_select_sql(queries: int = QUERIES, rows: int = ROWS) -> str:
    """The query file: `queries` primary-key selects spread over the table (a fixed
    stride, so every run asks the same)."""
    stride = 7919  # a prime: ids cover the table without a pattern the cache could favour
    return "".join(f"SELECT v FROM kv WHERE id = {i * stride % rows + 1};\n"
                   for i in range(queries))


def seed_sql(rows: int = ROWS) -> str:
    """The point-select table, in the `example-db` schema."""
    return ("CREATE TABLE kv (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL) ENGINE=InnoDB;"
            f"INSERT INTO kv SELECT seq, CONCAT('value-', seq) FROM seq_1_to_{rows};")


def slap_command(target: Target, cell: Cell, requests: int, schema: str) -> list[str]:
    return [MYSQLSLAP, "--no-defaults", "-h", "127.0.0.1", "-P", str(target.port),
            f"--create-schema={schema}", "--no-drop", f"--concurrency={cell.clients}",
            "--iterations=1", f"--number-of-queries={requests}", f"--query={cell.test}",
            "--delimiter=;", "--csv", *target.args]


def parse_slap_csv(text: str) -> tuple[float, int]:
    """(seconds the queries took, clients) from mysqlslap --csv: `engine,load type,avg,
    min,max,clients,queries per client`."""
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 7 and re.fullmatch(r"[0-9.]+", parts[2]):
            return float(parts[2]), int(parts[5])
    raise ValueError(f"unexpected mysqlslap output: {text[-500:]!r}")


def run_slap(target: Target, cell: Cell, requests: int, schema: str) -> Sample:
    # mysqlslap splits the count over the clients, rounding down (and says so: "not exact")
    per_client = max(1, requests // cell.clients)
    requests = per_client * cell.clients
    before = _ticks(target)
    res = subprocess.run(slap_command(target, cell, requests, schema), capture_output=True,
                         text=True, timeout=600)
    cpu = _per_request(target, before, requests)
    if res.returncode != 0:
        raise RuntimeError(f"mysqlslap failed on {target.name}: "
                           f"{(res.stdout + res.stderr)[-2000:]}")
    seconds, clients = parse_slap_csv(res.stdout)
    rps = requests / seconds if seconds > 0 else float("nan")
    return Sample(rps, clients / rps * 1000, float("nan"), cpu)


# -- both -------------------------------------------------------------------------------


class Runner:
    """Runs cells, sizing each run from the path's last rate."""

    def __init__(self, seconds: float, schema: str = "example-db") -> None:
        self.seconds = seconds
        self.schema = schema
        self.rates: dict[tuple[str, str], float] = {}

    def requests(self, target: Target, cell: Cell) -> int:
        rate = self.rates.get((target.name, cell.name))
        if rate is None:
            return WARMUP[cell.engine]
        return max(MIN_REQUESTS, int(rate * self.seconds))

    def run(self, target: Target, cell: Cell) -> Sample:
        n = self.requests(target, cell)
        if cell.engine == "redis":
            sample = run_redis(target, cell, n)
        else:
            sample = run_slap(target, cell, n, self.schema)
        if sample.rps == sample.rps and sample.rps > 0:  # not NaN
            self.rates[(target.name, cell.name)] = sample.rps
        return sample

    def warm_up(self, targets: list[Target], cells: list[Cell]) -> None:
        for cell in cells:
            for target in targets:
                self.run(target, cell)
