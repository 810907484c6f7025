"""The relay engine's C under ThreadSanitizer and AddressSanitizer (csrc/fuzz/stress_relay.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_engine_lifetimes_and_threading_are_clean(tmp_path: Path, sanitizer: str) -> None:
    exe = tmp_path / "stress_relay"
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Werror", f"-fsanitize={sanitizer}",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         str(ROOT / "csrc/fuzz/stress_relay.c"), str(ROOT / "csrc/mwi_relay.c"),
         str(ROOT / "csrc/mwi_engine.c"), str(ROOT / "csrc/mwi_relay_tls.c"),
         str(ROOT / "csrc/mwi_tls.c"), str(ROOT / "csrc/mwi_tls_conn.c"),
         str(ROOT / "csrc/mwi_accept.c"),
         "-lssl", "-lcrypto", "-lpthread"],
        check=True,
    )
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
