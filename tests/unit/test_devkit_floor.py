"""The dev kit sits on the top floor: the package never imports it (it would drag test
tooling into the cluster), and it never imports the tests (the demo and the bench run
from an installed package)."""

from __future__ import annotations

import ast
from pathlib import Path

import mwiproxy

PACKAGE = Path(mwiproxy.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_in_the_package_imports_the_devkit() -> None:
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p)
                                                       if n.startswith("mwiproxy.devkit"))
                 for p in PACKAGE.rglob("*.py") if "devkit" not in p.parts}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_devkit_does_not_import_the_tests() -> None:
    files = sorted((PACKAGE / "devkit").glob("*.py"))
    assert len(files) >= 6
    for path in files:
        assert not [n for n in _imports(path) if n == "tests" or n.startswith("tests.")], path
