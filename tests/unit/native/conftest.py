"""Fixtures shared by the native-core tests: every test runs against both builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mwiproxy._native import acceptor_py, relay_py, tls_py, tlsrec_py

try:
    from mwiproxy._native import _relay as _relay_native
    from mwiproxy._native import _tlsrec as _tlsrec_native
except ImportError:  # not built: the native parameters are skipped
    _relay_native = None  # type: ignore[assignment]
    _tlsrec_native = None  # type: ignore[assignment]

Classify = Callable[[bytes | bytearray | memoryview], Any]

IMPLS = [
    pytest.param(tlsrec_py.classify, id="py"),
    pytest.param(
        _tlsrec_native.classify if _tlsrec_native else None,
        id="native",
        marks=[
            pytest.mark.native_only,
            pytest.mark.skipif(_tlsrec_native is None, reason="extension not built"),
        ],
    ),
]


@pytest.fixture(params=IMPLS)
def classify(request: pytest.FixtureRequest) -> Classify:
    return request.param  # type: ignore[no-any-return]


RELAY_IMPLS = [
    pytest.param(relay_py, id="py"),
    pytest.param(
        _relay_native,
        id="native",
        marks=[
            pytest.mark.native_only,
            pytest.mark.skipif(_relay_native is None, reason="extension not built"),
        ],
    ),
]


@pytest.fixture(params=RELAY_IMPLS)
def relay_mod(request: pytest.FixtureRequest) -> Any:
    """A relay build: a module with Relay, engine_for and close_engine."""
    return request.param


class _PureTLS:
    """The pure build's TLS names, shaped like the native _relay module."""

    TLSContext = tls_py.TLSContext
    TLSStream = tls_py.TLSStream
    Relay = relay_py.Relay
    Acceptor = acceptor_py.Acceptor
    close_engine = staticmethod(relay_py.close_engine)


TLS_IMPLS = [
    pytest.param(_PureTLS, id="py"),
    pytest.param(
        _relay_native,
        id="native",
        marks=[
            pytest.mark.native_only,
            pytest.mark.skipif(_relay_native is None, reason="extension not built"),
        ],
    ),
]


@pytest.fixture(params=TLS_IMPLS)
def tls_mod(request: pytest.FixtureRequest) -> Any:
    """A TLS build: TLSContext, TLSStream and the Relay that takes its streams."""
    return request.param


@pytest.fixture(scope="session")
def pki() -> Any:
    from .tlskit import Pki

    return Pki()
