"""The native C under ThreadSanitizer and AddressSanitizer: the relay engine
(csrc/fuzz/stress_relay.c), the client TLS session cache (stress_tls_sessions.c) and
TLS inside `-ping` framing in the relay (stress_tls_framed.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.native.sanitize import SANITIZERS, TSAN_ENV, build

pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


def _run(exe: Path, timeout: float, env: dict[str, str] | None = None) -> None:
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_engine_lifetimes_and_threading_are_clean(tmp_path: Path, sanitizer: str) -> None:
    _run(build(tmp_path, "stress_relay", sanitizer), 120)


@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_the_client_session_cache_is_clean_across_threads(tmp_path: Path, sanitizer: str
                                                          ) -> None:
    """csrc/fuzz/stress_tls_sessions.c: sessions stored, offered and evicted from several
    threads at once. Under TSan, OpenSSL's own (uninstrumented) refcounting is silenced
    by csrc/fuzz/tsan-openssl.supp; races in our code still fail the run."""
    _run(build(tmp_path, "stress_tls_sessions", sanitizer, core=False), 120, TSAN_ENV)


@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_tls_inside_ping_framing_is_clean(tmp_path: Path, sanitizer: str) -> None:
    """csrc/fuzz/stress_tls_framed.c: non-tunnel `-ping` relays (a client's own TLS in
    frames inside the outer TLS) with keepalives every millisecond between records while
    the client reads slowly, and every ending (close_notify, farewell, a frame cut short,
    idle timeout), the owner reading counters all along."""
    _run(build(tmp_path, "stress_tls_framed", sanitizer), 300, TSAN_ENV)
