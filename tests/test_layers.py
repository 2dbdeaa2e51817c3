"""The import graph is the one the README's architecture section draws: the edge daemon and the
central service both stand on the model runtime, the wire contract and the common pieces, and
never on each other. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWED: dict[str, set[str]] = {
    "appcommon": set(),
    "wire": set(),
    "modelrt": {"wire", "appcommon"},
    "agent": {"modelrt", "wire", "appcommon"},
    "aggregator": {"modelrt", "wire", "appcommon"},
}
"""Package -> the project packages it may import (besides itself)."""
OURS = {*ALLOWED, "demo", "tests", "bench"}


def imports_of(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def project_imports(package: str) -> dict[str, set[str]]:
    """Module path -> the other project packages it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        others = (imports_of(path) & OURS) - {package}
        if others:
            out[str(path.relative_to(ROOT))] = others
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    wrong = {
        module: sorted(others - ALLOWED[package])
        for module, others in project_imports(package).items()
        if others - ALLOWED[package]
    }
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}; found {wrong}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from aggregator.store import connect\n    import agent.cli\n")
    assert imports_of(module) == {"aggregator", "agent"}


def test_installed_packages_are_the_layers_and_nothing_generic() -> None:
    """The wheel carries the layered packages only; demo/ (tools of a checkout) is not one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(name.rstrip("*") for name in include) == sorted(ALLOWED)
    scripts = project["project"]["scripts"]
    assert scripts == {"secagent": "agent.cli:main", "secagg": "aggregator.cli:main"}


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/; test modules and conftest import only from there."""
    wrong: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module = node.module
                if module.startswith("tests.") and not module.startswith("tests.support"):
                    wrong.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert not wrong, f"test modules import other test modules: {wrong}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_is_a_regular_package(package: str) -> None:
    """A folder without ``__init__.py`` is a namespace package that setuptools' find leaves out
    of the wheel."""
    assert (ROOT / package / "__init__.py").is_file()


def test_the_readme_draws_the_same_layers() -> None:
    """The README's table "Packages and who may import whom" says what ALLOWED enforces."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Packages and who may import whom", 1)[1].split("\n\n", 3)
    rows = [line for line in "\n\n".join(section[:3]).splitlines() if line.startswith("| `")]
    drawn: dict[str, set[str]] = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        package = cells[0].strip("`/")
        drawn[package] = (
            set()
            if cells[-1] == "nothing of ours"
            else {name.strip(" `") for name in cells[-1].split(",")}
        )
    assert drawn == ALLOWED
