"""Memory safety of the C classifier: replay many inputs under AddressSanitizer and UBSan."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from .hellos import build_hello, client_hello, handshake_of, refragment

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


def corpus() -> list[bytes]:
    rng = random.Random(1234)
    seeds = [
        client_hello("asan.test", ["a", "b"]),
        refragment(handshake_of(client_hello()), [1, 2, 3, 50]),
        refragment(build_hello(b"\x00\x15\x3f\xf0" + b"\x00" * 16368), [16384] * 2),
        b"\x00\x00\x00\x19\x00\x03\x00\x00user\x00alice\x00\x00",
        b"\x00\x00\x01\x0c\x04\xd2\x16\x2e" + bytes(260),
        b"POST /",
    ]
    out = []
    for seed in seeds:
        out += [seed[:cut] for cut in range(len(seed) + 1)][:3000]
        for _ in range(400):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                data[pos] = rng.choice([0, 1, 0xFF, rng.randrange(256)])
            out.append(bytes(data[: rng.randint(1, len(data))]))
    out += [rng.randbytes(rng.randint(0, 64)) for _ in range(2000)]
    return out


def test_classifier_is_memory_safe_under_asan(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_tlsrec"
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         str(ROOT / "csrc/fuzz/fuzz_tlsrec.c"), str(ROOT / "csrc/mwi_tlsrec.c")],
        check=True,
    )
    inputs = corpus()
    stream = b"".join(struct.pack("<I", len(d)) + d for d in inputs)
    run = subprocess.run([str(exe)], input=stream, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    assert run.stdout.decode().strip() == f"{len(inputs)} inputs"
