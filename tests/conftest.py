"""Suite-wide pytest configuration."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from mwiproxy.auth.storage.base import Storage
from tests._testbase.pgstore import BACKENDS, StorageServer, opener


def native_run() -> bool:
    """The native run is every run without MWIPROXY_NO_EXTENSIONS=1: it must be native."""
    return os.environ.get("MWIPROXY_NO_EXTENSIONS") != "1"


def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "native_only: needs the compiled extension")
    config.addinivalue_line("markers", "integration: starts real processes and servers")
    if native_run():
        # A native run on the pure twins would pass while proving nothing about the C core.
        import mwiproxy._native as native

        if not native.NATIVE:
            raise pytest.UsageError(
                f"native test run, but the compiled core is not loaded "
                f"({native.NATIVE_UNAVAILABLE}); build it with scripts/install-deps, "
                f"or test the pure-Python build with MWIPROXY_NO_EXTENSIONS=1"
            )


def pytest_runtest_logreport(report):  # type: ignore[no-untyped-def]
    """scripts/test runs a failed test once more in a fresh process (and says so): it
    learns which ones failed from this file."""
    path = os.environ.get("MWIPROXY_FAILED_TESTS")
    # only this suite's own tests (a test that runs pytest inside must not add its ids)
    if path and report.failed and os.path.exists(report.nodeid.split("::")[0]):
        with open(path, "a", encoding="utf-8") as f:
            f.write(report.nodeid + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """In the native run a native_only test that skips is a failure, not a quiet pass."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and native_run() and item.get_closest_marker("native_only"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"native_only test skipped in the native run: {reason}"


@pytest.fixture(scope="session")
def storage_server() -> Iterator[Callable[[], StorageServer]]:
    """The PostgreSQL the storage tests use: started on first use, once per session."""
    started: list[StorageServer] = []

    def get() -> StorageServer:
        if not started:
            from mwiproxy.devkit import postgres

            if not postgres.available():
                pytest.skip("PostgreSQL 15 binaries not installed")
            started.append(StorageServer())
        return started[0]

    yield get
    for server in started:
        server.stop()


@pytest.fixture(params=BACKENDS)
def open_storage(request, tmp_path, storage_server  # type: ignore[no-untyped-def]
                 ) -> Callable[[], Storage]:
    """Opens a Storage (SQLite or PostgreSQL) on this test's own state; call it twice for
    two processes' view of the same state. The test closes what it opens."""
    return opener(request.param, tmp_path, storage_server)


@pytest.fixture
def storage(open_storage) -> Iterator[Storage]:  # type: ignore[no-untyped-def]
    """One Storage per backend (the test body runs once on each)."""
    store = open_storage()
    yield store
    store.close()
