"""Memory safety of the Redis query-event encoder (csrc/mwi_rdsauditenc.c) under
AddressSanitizer and UBSan: csrc/fuzz/fuzz_rdsauditenc.c encodes tap-made, mutated and
random records, each cut at every length, in the three parameter modes."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mwiproxy._native import rdsaudit_py

from .pgauditkit import mutate
from .sanitize import ROOT
from .test_rdsaudit_differential import command

pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]

WORDS = [b"AUTH", b"hello", b"ACL", b"SETUSER", b"MIGRATE", b"AUTH2", b"CONFIG",
         b"requirepass", b">pw", b"!x", b"SET", b"", "é".encode(), b"\xff", b"\xed\xa0\x80"]


def _records(rng: random.Random) -> list[bytes]:
    tap = rdsaudit_py.Tap()
    for _ in range(400):
        words = [rng.choice(WORDS[:11])] + [
            rng.choice(WORDS) if rng.random() < 0.7 else rng.randbytes(rng.randrange(300))
            for _ in range(rng.randrange(20))]
        tap.feed(0, command(*words) if rng.random() < 0.9 else b"ping x\r\n", 1)
    records = list(tap.records)
    records += [mutate(rng, r) for r in rng.sample(records, 200)]
    records += [b"K" + rng.randbytes(rng.randrange(80)) for _ in range(100)]
    return records


def test_encoder_is_memory_safe_under_asan(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_rdsauditenc"
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         str(ROOT / "csrc/fuzz/fuzz_rdsauditenc.c"), str(ROOT / "csrc/mwi_rdsauditenc.c"),
         str(ROOT / "csrc/mwi_auditenc.c"), "-lcrypto"],
        check=True,
    )
    records = _records(random.Random(7))
    run = subprocess.run([str(exe)], input=b"".join(struct.pack("<I", len(r)) + r
                                                    for r in records),
                         capture_output=True, timeout=240)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    done, events = run.stdout.decode().split(" records, ")
    assert int(done) == len(records)
    assert int(events.split()[0]) >= 2 * 400  # every tap-made record, omitted and hashed
