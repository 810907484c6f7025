"""The routing acceptor's C under ThreadSanitizer and AddressSanitizer
(csrc/fuzz/stress_accept.c): every kind of client at once, reloads and cap notices from
the owner thread, a close with a connection in flight; pause/resume from the owner, and a
plain acceptor closed mid-handover that loses no accepted connection."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.native.sanitize import SANITIZERS, build

pytestmark = [
    pytest.mark.native_only,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]


@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_routing_acceptor_is_clean_under_sanitizers(tmp_path: Path, sanitizer: str,
                                                    pki: Any) -> None:
    exe = build(tmp_path, "stress_accept", sanitizer)
    pems = []
    for name, data in (("cert", pki.server.cert_pem), ("key", pki.server.key_pem),
                       ("ca", pki.ca.pem)):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        pems.append(str(path))
    run = subprocess.run([str(exe), *pems], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
    counts = dict(zip(run.stderr.split()[0:12:2], run.stderr.split()[1:12:2], strict=False))
    assert int(counts["tls"]) > 0 and int(counts["raw"]) > 0 and int(counts["refused"]) > 0
