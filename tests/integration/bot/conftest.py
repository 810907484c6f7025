from __future__ import annotations

import pytest

from tests.integration.bot.botkit import BotEnv, start_env


@pytest.fixture
def env(tmp_path) -> BotEnv:
    e = start_env(tmp_path)
    yield e
    e.cluster.stop()
