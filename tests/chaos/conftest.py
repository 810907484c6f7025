"""Shared pieces of the chaos tests: the smoke/long switch and a cluster with a bot."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509

from tests.integration.bot.botkit import BotEnv, start_env

T = TypeVar("T")

LONG = os.environ.get("MWIPROXY_CHAOS_LONG", "") not in ("", "0")


def pick(smoke: T, long: T) -> T:
    """The smoke value in CI, the long one under MWIPROXY_CHAOS_LONG=1."""
    return long if LONG else smoke


def serial(dest: Path) -> int:
    """The serial of the certificate an output holds (0: none readable)."""
    try:
        return x509.load_pem_x509_certificate((dest / "tlscert").read_bytes()).serial_number
    except (OSError, ValueError):
        return 0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[BotEnv]:
    e = start_env(tmp_path)
    yield e
    e.cluster.stop()
