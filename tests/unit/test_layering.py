"""The dependency rules of the layout: faces reach the platform only through the
engine; the monitor and the model consume model values, not platform modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "netwarden"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["cli", "tui", "monitor", "model", "callout"])
def test_package_does_not_import_the_platform(package: str) -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(n for n in _imports(path) if "netwarden.platform" in n)
        for path in (SRC / package).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_packages_exist() -> None:
    # A renamed package would make the test above pass vacuously.
    for package in ("cli", "tui", "monitor", "model", "callout", "engine"):
        assert list((SRC / package).glob("*.py")), package
