from __future__ import annotations

import pytest

from tests._testbase.cluster import ClusterProcess


@pytest.fixture
def cluster(tmp_path):
    c = ClusterProcess(tmp_path / "data").start()
    yield c
    c.stop()
