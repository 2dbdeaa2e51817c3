"""Which ONNX Runtime is installed. secagent installs exactly one, chosen with an extra:
``pip install '.[cpu]'`` (``onnxruntime``) or ``'.[gpu]'`` (``onnxruntime-gpu``). Every ONNX
Runtime distribution installs the same ``onnxruntime`` package, so with two of them installed
the files of the last one installed win, silently: that is refused as well as none at all.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from importlib import metadata
from types import ModuleType

RUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
)
"""The PyPI distributions that each install the ``onnxruntime`` package."""

INSTALL_HINT = (
    "install exactly one: pip install 'secagent[cpu]' (onnxruntime) or "
    "'secagent[gpu]' (onnxruntime-gpu; on Jetson, NVIDIA's onnxruntime-gpu wheel for JetPack); "
    "from a checkout: pip install -c constraints.txt -e '.[cpu]' or '.[gpu]'"
)


class RuntimeInstallError(RuntimeError):
    """No ONNX Runtime is installed, more than one is, or the one installed cannot be imported."""


def installed_runtimes() -> dict[str, str]:
    """The ONNX Runtime distributions installed, name -> version."""
    found: dict[str, str] = {}
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def runtime_problem(installed: Mapping[str, str], *, import_error: str | None) -> str | None:
    """What is wrong with the ONNX Runtime installation, or None when exactly one is installed
    and imports. ``installed``: distribution -> version; ``import_error``: why ``import
    onnxruntime`` failed (None when it worked)."""
    listed = ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
    if len(installed) > 1:
        return (
            f"more than one ONNX Runtime is installed ({listed}); they overwrite each other's "
            f"files. Uninstall them all (pip uninstall -y {' '.join(sorted(installed))}), then "
            f"{INSTALL_HINT}"
        )
    if import_error is None:
        return None
    if not installed:
        return f"no ONNX Runtime is installed (import onnxruntime: {import_error}); {INSTALL_HINT}"
    return (
        f"{listed} is installed but cannot be imported: {import_error}; reinstall it, or "
        f"{INSTALL_HINT}"
    )


@functools.cache
def load_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, once it is certain that exactly one ONNX Runtime is installed.

    Raises :class:`RuntimeInstallError` with what was found and how to fix it. The check runs
    once per process (a failure is checked again on the next call).
    """
    installed = installed_runtimes()
    try:
        module = importlib.import_module("onnxruntime")
    except ImportError as exc:
        problem = runtime_problem(installed, import_error=str(exc) or type(exc).__name__)
        raise RuntimeInstallError(problem) from exc
    problem = runtime_problem(installed, import_error=None)
    if problem is not None:
        raise RuntimeInstallError(problem)
    return module


__all__ = [
    "INSTALL_HINT",
    "RUNTIME_DISTRIBUTIONS",
    "RuntimeInstallError",
    "installed_runtimes",
    "load_onnxruntime",
    "runtime_problem",
]
