"""Suite-wide pytest configuration."""

from __future__ import annotations


def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "native_only: needs the compiled extension")
    config.addinivalue_line("markers", "integration: starts real processes and servers")
