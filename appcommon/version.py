"""The code version recorded on every result: the package version plus the git commit if known."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """``0.1.0`` or ``0.1.0+g<commit>[.dirty]`` when running from a git checkout."""
    try:
        base = metadata.version("secagent")
    except metadata.PackageNotFoundError:
        base = "0.0.0"
    root = Path(__file__).resolve().parent.parent  # the checkout, when run from one
    if not (root / ".git").exists():
        return base
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}" + (".dirty" if dirty else "")
