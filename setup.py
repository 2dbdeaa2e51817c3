"""Build hook: the package version carries the git commit it is built from
(``0.1.0+g<commit>[.dirty]``), and the built package records it in ``appcommon/_build_info.py``
so that ``code_version()`` knows it outside a checkout. Everything else is in pyproject.toml."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
VERSION_MODULE = ROOT / "appcommon" / "version.py"


def _version_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_secagent_version", VERSION_MODULE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {VERSION_MODULE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VERSION: str = _version_module().build_version(ROOT)


class BuildPyWithVersion(build_py):  # type: ignore[misc]  # setuptools is untyped here
    """``build_py`` that starts from an empty build folder for our packages and writes
    ``appcommon/_build_info.py`` with :data:`VERSION` (not in editable mode: a checkout reports
    its live commit)."""

    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)
        if not editable:
            # pip builds in the checkout: drop what an earlier build left in build/lib, so a
            # module deleted since is not shipped again
            for package in {name.split(".")[0] for name in self.packages or ()}:
                shutil.rmtree(Path(self.build_lib) / package, ignore_errors=True)
        super().run()
        if editable:
            return
        target = Path(self.build_lib) / "appcommon" / "_build_info.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            f'"""Written by setup.py when this package was built."""\n\nVERSION = {VERSION!r}\n',
            encoding="utf-8",
        )


setup(version=VERSION, cmdclass={"build_py": BuildPyWithVersion})
