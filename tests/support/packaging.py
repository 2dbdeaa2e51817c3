"""Building this checkout's wheel as pip builds it (setup.py's version hook included), and
pip itself, for the packaging and install tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip(*args: str | Path, python: Path | str = sys.executable, timeout_s: float = 600) -> str:
    done = subprocess.run(
        [str(python), "-m", "pip", "-q", "--disable-pip-version-check", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return done.stdout


def build_wheel(source: Path, out: Path) -> Path:
    """The wheel of the checkout at ``source``, built without network (no build isolation)."""
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source)
    (built,) = out.glob("secagent-*.whl")
    return built
