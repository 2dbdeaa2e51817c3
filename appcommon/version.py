"""The code version recorded on every result: the release plus the git commit it was built from.

- Run from a git checkout (editable install): the live commit, ``0.1.0+g<commit>[.dirty]``.
- Installed from a wheel or sdist: the commit baked in at build time. ``setup.py`` computes the
  package version with :func:`build_version` and writes it to ``appcommon/_build_info.py`` in the
  built package, so ``importlib.metadata.version("secagent")`` and :func:`code_version` agree.

This module imports only the standard library: ``setup.py`` loads it by path before anything is
installed.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
from importlib import metadata
from pathlib import Path

RELEASE = "0.1.0"
"""The release this code belongs to; the git commit is added as a local version label."""

DIST_NAME = "secagent"
BUILD_INFO_MODULE = "appcommon._build_info"
"""Written into the built package by ``setup.py``: ``VERSION = "0.1.0+g<commit>[.dirty]"``."""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


def git_version(root: Path) -> str | None:
    """``RELEASE+g<commit>[.dirty]`` for the git checkout at ``root``; None when ``root`` is not
    one or git cannot tell. ``.dirty``: tracked files differ from the commit."""
    if not (root / ".git").exists():
        return None
    try:
        sha = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    return f"{RELEASE}+g{sha}" + (".dirty" if dirty else "")


def build_version(root: Path) -> str:
    """The version to build from the source tree at ``root``: its git commit when it is a
    checkout, else the version an sdist recorded in its ``PKG-INFO``, else :data:`RELEASE`."""
    live = git_version(root)
    if live is not None:
        return live
    pkg_info = root / "PKG-INFO"
    if pkg_info.is_file():
        for line in pkg_info.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version:"):
                return line.partition(":")[2].strip()
    return RELEASE


def _baked_version() -> str | None:
    try:
        module = importlib.import_module(BUILD_INFO_MODULE)
    except ImportError:
        return None
    value = getattr(module, "VERSION", None)
    return value if isinstance(value, str) and value else None


def _installed_version() -> str:
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return RELEASE


@functools.cache
def code_version() -> str:
    """``0.1.0+g<commit>[.dirty]``: the live commit when running from a git checkout, else the
    commit baked in when the package was built, else the installed package's version."""
    checkout = Path(__file__).resolve().parent.parent
    return git_version(checkout) or _baked_version() or _installed_version()
