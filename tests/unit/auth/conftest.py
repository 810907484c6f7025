from __future__ import annotations

import pytest

from tests._testbase.authkit import Clock, guide_service
from tests._testbase.pgstore import opener


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(request, tmp_path, clock, storage_server):
    """The guide's auth service; `svc.clock_obj` is the clock the test may move. On SQLite,
    or on each backend for a test marked `parametrize("svc", BACKENDS, indirect=True)`."""
    backend = getattr(request, "param", "sqlite")
    s = guide_service(tmp_path, clock, opener(backend, tmp_path, storage_server)())
    s.clock_obj = clock  # type: ignore[attr-defined]
    yield s
    s.audit.close()
    s.storage.close()
