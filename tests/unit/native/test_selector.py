"""The selector: native unless told otherwise or unavailable, and then it says so once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PROBE = "import mwiproxy._native as n; print(n.NATIVE, n.classify.__module__, n.Relay.__module__)"


def probe(env_extra: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    # the inner run's failures are its own: not for scripts/test's re-run list
    env = {k: v for k, v in os.environ.items()
           if k not in ("MWIPROXY_NO_EXTENSIONS", "MWIPROXY_FAILED_TESTS")}
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


def run_pytest(args: list[str], prelude: str = "", env_extra: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """A nested pytest run with the suite's conftest as a plugin, from the repository root."""
    # the inner run's failures are its own: not for scripts/test's re-run list
    env = {k: v for k, v in os.environ.items()
           if k not in ("MWIPROXY_NO_EXTENSIONS", "MWIPROXY_FAILED_TESTS")}
    env.update(env_extra or {})
    code = prelude + f"import pytest, sys; sys.exit(pytest.main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_native_run_without_the_compiled_core_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    out = run_pytest(["-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir",
                      str(tmp_path), str(tmp_path)],
                     prelude="import sys; sys.modules['mwiproxy._native._relay'] = None; ")
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert "compiled core is not loaded" in out.stderr + out.stdout


def test_native_only_test_that_skips_fails_the_native_run(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.native_only\n"
        "def test_x():\n    pytest.skip('toolchain missing')\n")
    args = ["-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir",
            str(tmp_path), str(tmp_path)]
    native = run_pytest(args)
    assert native.returncode == pytest.ExitCode.TESTS_FAILED
    assert "skipped in the native run: Skipped: toolchain missing" in native.stdout
    pure = run_pytest(args, env_extra={"MWIPROXY_NO_EXTENSIONS": "1"})
    assert pure.returncode == pytest.ExitCode.OK and "1 skipped" in pure.stdout
