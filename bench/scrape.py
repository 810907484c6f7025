"""Metrics on, for a bench topology: a diagnostics address for every mwiproxy process
(cluster.yaml `diag_addr`, `mwibot proxy --diag-addr`, the agent's `db_service.diag_addr`)
and a scraper that GETs each /metrics once a second while a cell is measured, as a
Prometheus server would. The processes' CPU per transaction then includes serving the
scrapes, as it would in production."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mwiproxy.devkit.ports import free_port

SCRAPE_INTERVAL = 1.0  # seconds, as a Prometheus scrape_interval of 1s
SCRAPE_TIMEOUT = 5.0


def cluster_takes_diag_addr() -> bool:
    """Whether this build's cluster.yaml has a top-level `diag_addr` (older builds refuse
    the key, so the bench then scrapes the local proxies and the agent only)."""
    from mwiproxy.config.cluster import ClusterConfig

    return "diag_addr" in {f.name for f in dataclasses.fields(ClusterConfig)}


@dataclass
class Endpoint:
    process: str
    addr: str
    scrapes: int = 0
    failures: int = 0
    last_error: str = ""
    last_body: bytes = b""

    @property
    def url(self) -> str:
        return f"http://{self.addr}/metrics"

    def scrape(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT) as resp:
                self.last_body = resp.read()
            self.scrapes += 1
        except OSError as exc:  # URLError and timeouts included
            self.failures += 1
            self.last_error = str(exc)

    def summary(self) -> dict[str, Any]:
        """What was scraped: counts, and the metric families of the last answer."""
        from prometheus_client.parser import text_string_to_metric_families

        families = [f.name for f in text_string_to_metric_families(
            self.last_body.decode(errors="replace"))] if self.last_body else []
        own = sorted(n for n in families if n.startswith(("mwiproxy_", "mwibot_", "tbot_")))
        return {"process": self.process, "url": self.url, "scrapes": self.scrapes,
                "failures": self.failures, "last_error": self.last_error,
                "families": len(families), "product_families": own}


class Diag:
    """The diagnostics addresses handed out for one topology, and their scraper."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.notes: list[str] = []

    def addr(self, process: str) -> str:
        endpoint = Endpoint(process, f"127.0.0.1:{free_port()}")
        self.endpoints.append(endpoint)
        return endpoint.addr

    def cluster_template(self, template: str) -> str:
        """The cluster.yaml template with a top-level diag_addr (unchanged, and noted,
        when this build's cluster does not take one)."""
        if not cluster_takes_diag_addr():
            self.notes.append("the cluster was not scraped: this build's cluster.yaml has "
                              "no diag_addr")
            return template
        head, sep, rest = template.partition("\nproxy:")
        assert sep, "the cluster template has no proxy: section"
        return f"{head}\ndiag_addr: {self.addr('cluster')}{sep}{rest}"

    def proxy_flags(self, process: str) -> tuple[str, ...]:
        return (f"--diag-addr={self.addr(process)}",)

    def agent_extra(self) -> str:
        """The line for the agent's db_service: block (devkit Agent's service_extra)."""
        return f"  diag_addr: {self.addr('database agent')}\n"

    @contextmanager
    def scraping(self) -> Iterator[None]:
        """Every endpoint scraped once a second until the block ends."""
        stop = threading.Event()

        def loop() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                for endpoint in self.endpoints:
                    endpoint.scrape()
                next_at += SCRAPE_INTERVAL
                stop.wait(max(0.0, next_at - time.monotonic()))

        thread = threading.Thread(target=loop, name="bench-scraper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(SCRAPE_TIMEOUT * (len(self.endpoints) + 1))

    def summary(self) -> dict[str, Any]:
        return {"endpoints": [e.summary() for e in self.endpoints], "notes": self.notes}

    def report(self) -> str:
        lines = [f"- {e['process']} ({e['url']}): {e['scrapes']} scrapes, {e['failures']} "
                 f"failed{' (' + e['last_error'] + ')' if e['failures'] else ''}; "
                 f"{e['families']} metric families, {len(e['product_families'])} of the "
                 "product's" for e in self.summary()["endpoints"]]
        return "\n".join(lines + [f"- note: {n}" for n in self.notes])
