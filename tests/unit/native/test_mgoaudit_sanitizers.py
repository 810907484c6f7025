"""Memory safety of the MongoDB query-audit tap (csrc/mwi_mgoaudit.c) under
AddressSanitizer and UBSan: csrc/fuzz/fuzz_mgoaudit.c replays generated, mutated and
random sessions chunk by chunk and cut again (and mutated by the harness), and both must
give the same records. The short CI run; the long one: `fuzz_mgoaudit 700 < sessions`."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from . import myauditkit
from .mgoauditkit import session
from .sanitize import ROOT

pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


def test_tap_is_memory_safe_under_asan(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_mgoaudit"
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         str(ROOT / "csrc/fuzz/fuzz_mgoaudit.c"), str(ROOT / "csrc/mwi_mgoaudit.c")],
        check=True,
    )
    rng = random.Random(99)
    sessions = []
    for _ in range(600):
        chunks = session(rng)
        if chunks and rng.random() < 0.5:
            i = rng.randrange(len(chunks))
            chunks[i] = (chunks[i][0], myauditkit.mutate(rng, chunks[i][1]))
        elif rng.random() < 0.2:
            chunks = [(rng.randrange(2), rng.randbytes(rng.randrange(1, 80))) for _ in range(5)]
        sessions.append(struct.pack("<I", len(chunks)) + b"".join(
            bytes([side]) + struct.pack("<I", len(data)) + data for side, data in chunks))
    run = subprocess.run([str(exe), "2"], input=b"".join(sessions), capture_output=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    assert run.stdout.decode().strip() == f"{len(sessions)} sessions, {3 * len(sessions)} inputs"
