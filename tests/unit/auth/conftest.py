from __future__ import annotations

import pytest

from tests._testbase.authkit import Clock, guide_service


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(tmp_path, clock):
    """The guide's auth service; `svc.clock_obj` is the clock the test may move."""
    s = guide_service(tmp_path, clock)
    s.clock_obj = clock  # type: ignore[attr-defined]
    yield s
    s.audit.close()
    s.storage.close()
