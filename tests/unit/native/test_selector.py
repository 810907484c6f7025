"""The selector: native unless told otherwise or unavailable, and then it says so once."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import mwiproxy._native as n; print(n.NATIVE, n.classify.__module__, n.Relay.__module__)"


def probe(env_extra: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MWIPROXY_NO_EXTENSIONS"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-W", "always", "-c", prelude + PROBE],
                          env=env, capture_output=True, text=True, check=True)


def test_no_extensions_env_selects_pure_python() -> None:
    out = probe({"MWIPROXY_NO_EXTENSIONS": "1"})
    assert out.stdout.split() == ["False", "mwiproxy._native.tlsrec_py",
                                  "mwiproxy._native.relay_py"]
    assert "unavailable" not in out.stderr


def test_missing_extension_falls_back_with_one_warning() -> None:
    out = probe({}, "import sys; sys.modules['mwiproxy._native._relay'] = None; ")
    assert out.stdout.split()[0] == "False"
    assert out.stderr.count("native core unavailable") == 1
