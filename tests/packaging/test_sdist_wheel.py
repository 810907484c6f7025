"""The package installs from its sdist: `python -m build --sdist`, a wheel built from that
sdist by pip (what `pip install mwiproxy-*.tar.gz` does), installed into a fresh venv; the
compiled core, the console scripts and the operator's files (systemd units, Grafana
dashboards) then come from the installed copy, not from this source tree.

No network: the build runs with this interpreter's Cython and setuptools (those
scripts/install-deps installs; --no-build-isolation), and the venv finds the runtime
dependencies in this interpreter's site-packages (a .pth file; --no-index); the test checks
that mwiproxy itself is imported from the venv. Native run only: it compiles the core once.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.native_only

ROOT = Path(__file__).resolve().parents[2]
# a build step waits on the compiler: wide bound for a loaded 2-core CI box
STEP_TIMEOUT = 240


def _env() -> dict[str, str]:
    """No setting that would make the build pure-Python or import this source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MWIPROXY_NO_EXTENSIONS", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(*cmd: str | Path, cwd: Path) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=STEP_TIMEOUT)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}" \
                                f"\n{res.stderr[-3000:]}"
    return res.stdout


def _venv(path: Path, cwd: Path) -> Path:
    """A fresh venv that also sees this interpreter's site-packages, after its own: unlike
    --system-site-packages that works from a venv too (it would see the base's), and the
    .pth files there (an editable mwiproxy of a source tree) stay unprocessed."""
    _run(sys.executable, "-m", "venv", path, cwd=cwd)
    py = path / "bin" / "python"
    purelib = _run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                   cwd=cwd).strip()
    (Path(purelib) / "_outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return py


def _sdist(out: Path) -> Path:
    _run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT,
         cwd=out)
    (sdist,) = out.glob("mwiproxy-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("LICENSE", "csrc/mwi_relay.c", "csrc/mwi_relay.h", "csrc/mwi_tls_int.h",
                   "mwiproxy/_native/_relay.pyx", "mwiproxy/_native/_relay.pxd",
                   "mwiproxy/_native/_tls.pxi", "mwiproxy/_native/_accept.pxi",
                   "mwiproxy/_native/_relay.pyi", "mwiproxy/py.typed",
                   "deploy/systemd/mwiproxy.service", "grafana/dashboards"):
        assert any(n == needed or n.startswith(needed + "/") for n in names), \
            f"{needed} is missing from the sdist {sdist.name}"
    return sdist


def _wheel_from(sdist: Path, out: Path) -> Path:
    # this interpreter's pip: a venv has its own, older setuptools (ensurepip's)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
         "--no-index", "-w", out, sdist, cwd=out)
    (wheel,) = out.glob("mwiproxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("mwiproxy/_native/_relay.") and n.endswith(".so") for n in names)
    # .dist-info/licenses/LICENSE since setuptools 77 (PEP 639), .dist-info/LICENSE before
    assert any(".dist-info/" in n and n.endswith("/LICENSE") for n in names)
    return wheel


def test_sdist_builds_a_wheel_that_installs_and_runs_native(tmp_path: Path) -> None:
    dist, work = tmp_path / "dist", tmp_path / "elsewhere"
    dist.mkdir()
    work.mkdir()  # not the source tree: imports must resolve to the installed copy
    venv = tmp_path / "venv"
    py, bin_dir = _venv(venv, work), venv / "bin"

    wheel = _wheel_from(_sdist(dist), dist)
    _run(py, "-m", "pip", "install", "-q", "--no-index", wheel, cwd=work)

    got = _run(py, "-c", "import mwiproxy, mwiproxy._native as n; "
               "print(mwiproxy.__file__, n.NATIVE, n.NATIVE_UNAVAILABLE)", cwd=work).split()
    assert Path(got[0]).is_relative_to(venv), f"mwiproxy imported from {got[0]}, not the venv"
    assert got[1] == "True", f"the installed copy runs without its native core: {got[2:]}"
    from mwiproxy import __version__

    assert _run(bin_dir / "mwiproxy", "--version", cwd=work).split() == ["mwiproxy", __version__]
    for script in ("mwictl", "mwibot"):
        assert script in _run(bin_dir / script, "--help", cwd=work)

    share = venv / "share" / "mwiproxy"
    assert (share / "systemd" / "mwiproxy.service").is_file()
    assert list((share / "grafana" / "dashboards").glob("*.json"))
    assert (share / "grafana" / "provisioning" / "dashboards.yaml").is_file()
