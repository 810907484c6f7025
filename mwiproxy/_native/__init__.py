"""The native core's one door: picks the compiled build or its pure-Python twin.

Everything outside this package imports from here only. The compiled modules are used
unless MWIPROXY_NO_EXTENSIONS=1 is set or they fail to import (then a warning is issued
once and the pure-Python twins take over, all of them together; results are identical,
only slower).
"""

from __future__ import annotations

import os
import warnings

from .acceptor_py import Acceptor
from .auditenc_py import canonical_fields, chain_rows, hmac_digests, link_hash
from .counters import CounterTable
from .firstbytes import (
    KIND_GARBAGE,
    KIND_HTTP,
    KIND_NEED_MORE,
    KIND_PG_CANCEL,
    KIND_PG_GSSENC,
    KIND_PG_SSL,
    KIND_PG_STARTUP,
    KIND_TLS,
    FirstBytes,
)
from .inspect_py import MAX_HELD
from .myauditenc_py import mysql_query_texts
from .pgaudit_py import decode as pgaudit_decode
from .rdsauditenc_py import redis_query_texts
from .relay_py import Relay, close_engine, engine_for, engines_for
from .relaytypes import (
    ACC_CAPPED,
    ACC_RAW,
    ACC_REFUSED,
    ACC_TLS,
    CLOSE_REASONS,
    MONGO_MAX_MESSAGE,
    REASON_CLOSE_TIMEOUT,
    REASON_CLOSED,
    REASON_EOF,
    REASON_ERROR,
    REASON_IDLE_TIMEOUT,
    REASON_PROTOCOL,
    REASON_REFUSED,
    REASON_RESET_A,
    REASON_RESET_B,
    REASONS,
    UNIX_SOURCE,
    Accepted,
    AcceptorStats,
    Framing,
    RelayStats,
)
from .tls_py import TLSContext, TLSStream
from .tlsrec_py import classify
from .tlstypes import VERIFY_NONE, VERIFY_OPTIONAL, VERIFY_REQUIRED, TLSError
from .workers import AUTO, MAX_WORKERS, check_workers, default_workers, set_default_workers

# The pure-Python twins above are the reference API (what type checkers see); the
# compiled modules replace them with the same names and signatures (see the .pyi stubs).
NATIVE: bool = False
# Why the compiled build is not in use (None when it is): the native test run fails on it.
NATIVE_UNAVAILABLE: str | None = "MWIPROXY_NO_EXTENSIONS=1 is set"

if os.environ.get("MWIPROXY_NO_EXTENSIONS") != "1":
    try:
        from . import _auditenc, _relay, _tlsrec
    except ImportError as exc:  # not built, or built for another interpreter
        NATIVE_UNAVAILABLE = f"the compiled modules failed to import: {exc}"
        warnings.warn(
            f"mwiproxy native core unavailable ({exc}); using the pure-Python build",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        classify = _tlsrec.classify
        Relay = _relay.Relay  # type: ignore[assignment, misc]
        Acceptor = _relay.Acceptor  # type: ignore[assignment, misc]
        close_engine = _relay.close_engine
        engine_for = _relay.engine_for  # type: ignore[assignment]
        engines_for = _relay.engines_for  # type: ignore[assignment]
        TLSContext = _relay.TLSContext  # type: ignore[assignment, misc]
        TLSStream = _relay.TLSStream  # type: ignore[assignment, misc]
        pgaudit_decode = _relay.pgaudit_decode
        canonical_fields = _auditenc.canonical_fields
        chain_rows = _auditenc.chain_rows
        link_hash = _auditenc.link_hash
        hmac_digests = _auditenc.hmac_digests
        redis_query_texts = _auditenc.redis_query_texts
        mysql_query_texts = _auditenc.mysql_query_texts
        NATIVE = True
        NATIVE_UNAVAILABLE = None

__all__ = [
    "NATIVE",
    "NATIVE_UNAVAILABLE",
    "ACC_CAPPED",
    "ACC_RAW",
    "ACC_REFUSED",
    "ACC_TLS",
    "UNIX_SOURCE",
    "Accepted",
    "Acceptor",
    "AcceptorStats",
    "FirstBytes",
    "MAX_HELD",
    "Framing",
    "classify",
    "KIND_GARBAGE",
    "KIND_HTTP",
    "KIND_NEED_MORE",
    "KIND_PG_CANCEL",
    "KIND_PG_GSSENC",
    "KIND_PG_SSL",
    "KIND_PG_STARTUP",
    "KIND_TLS",
    "Relay",
    "RelayStats",
    "close_engine",
    "CounterTable",
    "canonical_fields",
    "chain_rows",
    "hmac_digests",
    "link_hash",
    "engine_for",
    "engines_for",
    "AUTO",
    "MAX_WORKERS",
    "check_workers",
    "default_workers",
    "set_default_workers",
    "pgaudit_decode",
    "redis_query_texts",
    "mysql_query_texts",
    "REASONS",
    "CLOSE_REASONS",
    "MONGO_MAX_MESSAGE",
    "REASON_CLOSE_TIMEOUT",
    "REASON_CLOSED",
    "REASON_EOF",
    "REASON_ERROR",
    "REASON_IDLE_TIMEOUT",
    "REASON_PROTOCOL",
    "REASON_REFUSED",
    "REASON_RESET_A",
    "REASON_RESET_B",
    "TLSContext",
    "TLSStream",
    "TLSError",
    "VERIFY_NONE",
    "VERIFY_OPTIONAL",
    "VERIFY_REQUIRED",
]
