"""Relayed bytes as a Prometheus counter, read from the relay engine at scrape time.

The relays add each chunk they deliver to a counter slot of their engine (natively on
its worker, csrc/mwi_engine.c; `relay.pipe.Pipe(count_as=key)` picks the slot), so a
scrape reads one table and sees every byte moved so far, sessions still open included,
without Python running per chunk. Keys are label tuples; this collector reports the keys
with as many values as it has label names (another family on the same engine uses
another number of labels), plus the direction: a -> b, the client's side first, is
"client_to_server".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from mwiproxy import _native

DIRECTION = "direction"
CLIENT_TO_SERVER = "client_to_server"
SERVER_TO_CLIENT = "server_to_client"


class RelayBytes(Collector):
    """One counter family `name`{labelnames..., direction} from `loop`'s engine."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name = name.removesuffix("_total")  # the family adds _total to its sample
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # the loop's table, taken now (on the loop's thread): a scrape only reads it
        self._table = _native.engine_for(loop).counters

    def describe(self) -> Iterator[Metric]:
        """Without reading: registering must not depend on what has been counted."""
        yield CounterMetricFamily(self.name, self.documentation,
                                  labels=(*self.labelnames, DIRECTION))

    def start(self, key: Sequence[str]) -> None:
        """Report `key` from now on, at 0 until a relay counts there."""
        self._table.slot(tuple(key))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation,
                                     labels=(*self.labelnames, DIRECTION))
        for key, (up, down) in sorted(self._table.read().items()):
            if len(key) != len(self.labelnames):
                continue
            family.add_metric([*key, CLIENT_TO_SERVER], up)
            family.add_metric([*key, SERVER_TO_CLIENT], down)
        yield family
