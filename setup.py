"""Build script: package metadata lives in pyproject.toml; this file builds the native core.

Each Cython module in mwiproxy/_native/ is compiled together with the C sources in csrc/
that it wraps (NATIVE_MODULES below). OpenSSL is linked from the system (libssl-dev).
Set MWIPROXY_NO_EXTENSIONS=1 at build time to skip the native build entirely; the
package then runs on its pure-Python twins.

The operator's files are installed as data files under <prefix>/share/mwiproxy/
(SHARED_DIRS below): systemd units in share/mwiproxy/systemd/, Grafana dashboards,
provisioning and alert rules in share/mwiproxy/grafana/ (README "Install from a package").
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

# module name -> C sources from csrc/ compiled into it (plus extra libraries)
NATIVE_MODULES: dict[str, dict[str, list[str]]] = {
    "mwiproxy._native._tlsrec": {"csrc": ["mwi_tlsrec.c"], "libs": []},
    "mwiproxy._native._auditenc": {"csrc": ["mwi_auditenc.c", "mwi_rdsauditenc.c"],
                                   "libs": ["crypto"]},
    "mwiproxy._native._relay": {
        "csrc": ["mwi_relay.c", "mwi_engine.c", "mwi_engine_timers.c", "mwi_relay_owner.c",
                 "mwi_relay_tls.c", "mwi_tls.c", "mwi_tls_conn.c",
                 "mwi_accept.c", "mwi_accept_route.c", "mwi_tlsrec.c", "mwi_inspect.c",
                 "mwi_inspect_mongo.c", "mwi_relay_inspect.c", "mwi_pgaudit.c", "mwi_myaudit.c",
                 "mwi_rdsaudit.c", "mwi_mgoaudit.c",
                 "mwi_relay_audit.c"],
        "libs": ["ssl", "crypto"],
    },
}


# source directory -> where its files land under <prefix>/share/mwiproxy/
SHARED_DIRS = {"deploy/systemd": "systemd", "grafana": "grafana"}


def _data_files() -> list[tuple[str, list[str]]]:
    """Every file under SHARED_DIRS (subdirectories kept), as setuptools data_files."""
    by_dir: dict[str, list[str]] = {}
    for src, dest in SHARED_DIRS.items():
        for path in sorted(Path(src).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                target = Path("share/mwiproxy", dest, path.parent.relative_to(src))
                by_dir.setdefault(target.as_posix(), []).append(path.as_posix())
    return sorted(by_dir.items())


def _extensions() -> list[Extension]:
    if os.environ.get("MWIPROXY_NO_EXTENSIONS") == "1" or not NATIVE_MODULES:
        return []
    from Cython.Build import cythonize

    debug = os.environ.get("MWI_DEBUG") == "1"
    exts = []
    for name, spec in NATIVE_MODULES.items():
        pyx = name.replace(".", "/") + ".pyx"
        exts.append(
            Extension(
                name,
                sources=[pyx] + [os.path.join("csrc", c) for c in spec.get("csrc", [])],
                include_dirs=["csrc"],
                libraries=spec.get("libs", []),
                define_macros=[("MWI_DEBUG", "1" if debug else "0")],
                extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
            )
        )
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False,
                                                                    "wraparound": False})


setup(ext_modules=_extensions(), data_files=_data_files())
