"""A MongoDB stand-in for the tests: mockupdb (PyPI; no MongoDB server can be installed
here) behind TLS that requires a client certificate, as a real `mongod --tlsMode
requireTLS --tlsCAFile …` would. It answers `isMaster`/`hello` like a 7.0 standalone,
accepts MONGODB-X509 `authenticate` (a real server would check the user against the
certificate's subject: the test checks both are `CN=<db user>`), and records every
request and every client certificate subject it saw."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest

mockupdb = pytest.importorskip("mockupdb")

HELLO = {"ismaster": True, "isWritablePrimary": True, "minWireVersion": 0,
         "maxWireVersion": 21, "maxBsonObjectSize": 16 * 1024 * 1024,
         "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
         "logicalSessionTimeoutMinutes": 30}


class TLSMockupDB(mockupdb.MockupDB):  # type: ignore[misc]
    def __init__(self, ctx: ssl.SSLContext, port: int, hello: dict[str, Any] | None = None,
                 **kw: Any) -> None:
        """`hello`: its answer to hello / isMaster (HELLO by default)."""
        super().__init__(port=port, auto_ismaster=hello or HELLO, **kw)
        self._tls = ctx
        self.subjects: list[str] = []
        self.requests: list[Any] = []
        self._seen_lock = threading.Lock()

    def run(self) -> int:
        self._listening_sock, self._address = mockupdb.bind_tcp_socket(self._address)
        self._listening_sock = self._tls.wrap_socket(self._listening_sock, server_side=True)
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()
        self.autoresponds("authenticate", ok=1)
        self.autoresponds("ping", ok=1)
        self.subscribe(self._record)  # sees every request first, answers none
        return int(self.port)

    def _record(self, request: Any) -> None:
        with self._seen_lock:
            self.requests.append(request)

    def _server_loop(self, client: socket.socket, client_addr: Any) -> None:
        if isinstance(client, ssl.SSLSocket):
            subject = dict(x[0] for x in (client.getpeercert() or {}).get("subject", ()))
            with self._seen_lock:
                self.subjects.append(f"CN={subject.get('commonName', '')}")
        super()._server_loop(client, client_addr)

    def commands(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(command name, database, document) of each request seen so far."""
        with self._seen_lock:
            return [(r.command_name, r.namespace, dict(r.doc)) for r in self.requests]


def server_context(cert: str, key: str, client_cas: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_cas)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
