"""Building the csrc/fuzz stress programs under a sanitizer, against the same C core the
extension is built from (setup.py's NATIVE_MODULES, read here, never listed twice)."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SANITIZERS = ["thread", "address,undefined"]
# OpenSSL is not instrumented: its own refcounting is silenced under TSan, ours is not
TSAN_ENV = {**os.environ, "TSAN_OPTIONS": f"suppressions={ROOT / 'csrc/fuzz/tsan-openssl.supp'}"}


def core_sources() -> list[str]:
    """The C files of the `_relay` extension, as setup.py lists them."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "NATIVE_MODULES":
            assert node.value is not None
            modules = ast.literal_eval(node.value)
            return list(modules["mwiproxy._native._relay"]["csrc"])
    raise AssertionError("setup.py has no NATIVE_MODULES")


def build(tmp_path: Path, program: str, sanitizer: str, *, core: bool = True) -> Path:
    """Compile csrc/fuzz/`program`.c (with the whole C core unless core=False) with -Werror
    and `sanitizer`; the executable's path."""
    exe = tmp_path / program
    sources = [f"fuzz/{program}.c", *(core_sources() if core else ["mwi_tls.c",
                                                                   "mwi_tls_conn.c"])]
    subprocess.run(
        ["gcc", "-g", "-O1", "-Wall", "-Werror", f"-fsanitize={sanitizer}",
         "-fno-sanitize-recover=all", f"-I{ROOT / 'csrc'}", "-o", str(exe),
         *(str(ROOT / "csrc" / s) for s in sources), "-lssl", "-lcrypto", "-lpthread"],
        check=True,
    )
    return exe
