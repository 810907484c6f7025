"""`python -m bench.engines`: Redis (redis-benchmark) and MariaDB (mysqlslap) through
direct TLS, the HAProxy topology and mwiproxy tunnel mode — the report's ratios, the
clients' output parsed, and a smoke run of every path against real servers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import engineload, engines
from bench.engineload import Cell, Sample, Target
from bench.engines import DIRECT, HAPROXY, MWIPROXY, Bench
from mwiproxy.devkit import mariadb, postgres, redis

CELL = Cell("redis", "GET, 50 clients", 50, "get")


def _bench(skipped: bool) -> tuple[Bench, engines.Results]:
    paths = [DIRECT, HAPROXY] + ([] if skipped else [MWIPROXY])
    bench = Bench(cells={"redis": [CELL]},
                  targets={"redis": [Target(p, 1, ()) for p in paths]},
                  skipped={"redis": "no redis engine in this tree"} if skipped else {})
    samples = {DIRECT: [30000, 40000, 35000], HAPROXY: [10000, 14000, 12000],
               MWIPROXY: [13000, 11000, 15000]}
    cpu = {DIRECT: (), HAPROXY: (30.0, 50.0), MWIPROXY: (20.0, 40.0)}
    results = {("redis", CELL.name, p): [Sample(r, 1.0, 2.0, cpu[p]) for r in samples[p]]
               for p in paths}
    return bench, results


def test_table_and_ratios_are_medians_against_direct_and_haproxy() -> None:
    bench, results = _bench(skipped=False)
    table = engines.table(bench, results)
    # medians: direct 35000, HAProxy 12000, mwiproxy 13000
    assert "| redis | GET, 50 clients | mwiproxy tunnel | 13000 | 1.000 | 2.000 | 0.37 | 1.08 | 60.0 (20.0 + 40.0) |" \
        in table
    assert "| redis | GET, 50 clients | HAProxy topology | 12000 |" in table
    assert table.splitlines()[2].endswith("| 1.00 | 2.92 | – |")  # direct: no proxy
    line = engines.ratios(bench, results)
    assert "mwiproxy/HAProxy 1.08×, mwiproxy/direct 0.37×" in line
    assert "60.0 vs 80.0 µs (0.75×)" in line
    data = json.loads(json.dumps(engines.samples_json(bench, results, "the command")))
    (mwi,) = [c for c in data["cells"] if c["path"] == MWIPROXY]
    assert [s["rps"] for s in mwi["samples"]] == [13000, 11000, 15000]
    assert mwi["samples"][0]["cpu_us_each"] == [20.0, 40.0]


def test_a_skipped_mwiproxy_path_is_said_with_its_reason() -> None:
    bench, results = _bench(skipped=True)
    assert MWIPROXY not in engines.table(bench, results)
    assert engines.ratios(bench, results) == \
        "- redis: mwiproxy path skipped: no redis engine in this tree"


def test_the_clients_outputs_are_parsed() -> None:
    # redis-benchmark 7 --csv: a header, then one row per test
    csv = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",'
           '"p95_latency_ms","p99_latency_ms","max_latency_ms"\n'
           '"GET","21739.13","2.194","0.328","1.991","3.583","5.279","12.023"\n')
    assert engineload.parse_redis_csv(csv) == (21739.13, 1.991, 5.279)
    with pytest.raises(ValueError):
        engineload.parse_redis_csv("ERROR: NOAUTH\n")
    # mysqlslap --csv: engine, load type, avg, min, max (seconds), clients, queries/client
    assert engineload.parse_slap_csv(",query,0.412,0.412,0.412,16,625\n") == (0.412, 16)
    with pytest.raises(ValueError):
        engineload.parse_slap_csv("mysqlslap: Error when connecting to server\n")


def test_point_selects_cover_the_table_by_primary_key() -> None:
    queries = engineload.point_select_sql().splitlines()
    ids = [int(q.rpartition("= ")[2].rstrip(";")) for q in queries]
    assert len(queries) == engineload.QUERIES == len(set(ids))
    assert all(1 <= i <= engineload.ROWS for i in ids)


def test_runs_are_sized_from_the_last_rate_of_their_path() -> None:
    runner = engineload.Runner(seconds=2)
    target = Target(HAPROXY, 1, ())
    assert runner.requests(target, CELL) == engineload.WARMUP["redis"]
    runner.rates[(HAPROXY, CELL.name)] = 12345.0
    assert runner.requests(target, CELL) == 24690
    runner.rates[(HAPROXY, CELL.name)] = 1.0
    assert runner.requests(target, CELL) == engineload.MIN_REQUESTS


@pytest.mark.skipif(not (redis.available() and mariadb.available() and postgres.available()
                         and shutil.which("haproxy") and shutil.which("redis-benchmark")
                         and shutil.which("mysqlslap")),
                    reason="Redis, MariaDB, PostgreSQL 15, HAProxy or the bench clients are "
                    "not installed (scripts/install-deps --bench)")
def test_smoke_every_path_carries_requests_to_real_servers(tmp_path: Path) -> None:
    """The one command (`python -m bench.engines --quick`) against real Redis (TLS only)
    and MariaDB (REQUIRE SUBJECT): a direct request succeeds only over TLS with the
    db_client certificate; the proxied paths burn proxy CPU in both their processes. The
    mwiproxy path runs where the tree has the engine, else it is skipped with the
    cluster's own refusal as the reason."""
    out, samples = tmp_path / "report.md", tmp_path / "samples.json"
    assert engines.main(["--quick", "--out", str(out), "--json", str(samples)]) == 0
    data = json.loads(samples.read_text())
    report = out.read_text()
    assert data["command"] == "python -m bench.engines --quick"
    for engine in engines.ENGINES:
        cells = [c for c in data["cells"] if c["engine"] == engine]
        assert {c["cell"] for c in cells} == {
            c.name for c in (engineload.redis_cells() if engine == "redis"
                             else engineload.mariadb_cells(""))}
        paths = {c["path"] for c in cells}
        if engine in data["skipped"]:
            assert "has no engine" in data["skipped"][engine]
            assert paths == {DIRECT, HAPROXY}
        else:
            assert paths == {DIRECT, HAPROXY, MWIPROXY}
            assert f"- {engine} " in report and "mwiproxy/HAProxy" in report
        for c in cells:
            (s,) = c["samples"]
            assert s["rps"] > 0 and s["lat_ms"] > 0, c
            assert (s["p99_ms"] is None) == (engine == "mariadb"), c
            if c["path"] == DIRECT:
                assert s["cpu_us_each"] == [] and c["processes"] == []
            else:  # both proxy processes, which together did work
                assert len(s["cpu_us_each"]) == len(c["processes"]) == 2, c
                assert sum(s["cpu_us_each"]) > 0, c
            assert f"| {engine} | {c['cell']} | {c['path']} |" in report
