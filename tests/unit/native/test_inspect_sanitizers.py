"""Memory safety of the inspection framer (csrc/mwi_inspect.c) under AddressSanitizer
and UBSan: csrc/fuzz/fuzz_inspect.c replays generated streams whole and in chunks (the
relay's in-place way), checking both take the same decisions on the stream's own bytes;
and an inspected relay under both sanitizers (csrc/fuzz/stress_inspect.c)."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mwiproxy._native.relaytypes import INSPECT_PROTOCOLS

from .inspectkit import stream
from .sanitize import ROOT, SANITIZERS, build

pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


def test_framer_is_memory_safe_under_asan(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_inspect"
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         str(ROOT / "csrc/fuzz/fuzz_inspect.c"), str(ROOT / "csrc/mwi_inspect.c"),
         str(ROOT / "csrc/mwi_inspect_mongo.c")],
        check=True,
    )
    rng = random.Random(99)
    records = []
    for protocol, proto in INSPECT_PROTOCOLS.items():
        for _ in range(3000):
            data = stream(protocol, rng) if rng.random() < 0.9 else rng.randbytes(60)
            if len(data) < 1 << 20:
                records.append(bytes([proto]) + struct.pack("<I", len(data)) + data)
    run = subprocess.run([str(exe)], input=b"".join(records), capture_output=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    assert run.stdout.decode().strip() == f"{len(records)} inputs"


@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_inspected_relays_hold_and_resume_cleanly(tmp_path: Path, sanitizer: str) -> None:
    exe = build(tmp_path, "stress_inspect", sanitizer)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
