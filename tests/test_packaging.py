"""The package as pip builds it: the version carries the commit it was built from (also outside
a checkout), and ONNX Runtime is an extra, CPU or GPU, never both; without exactly one ONNX
Runtime the agent refuses to start with a message that says what to install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from appcommon.version import RELEASE, build_version, code_version, git_version
from modelrt.runtime import INSTALL_HINT, runtime_problem
from tests.support import ROOT
from tests.support.packaging import build_wheel, pip

SECAGENT = Path(sys.executable).parent / "secagent"
PACKAGES = ("agent", "aggregator", "modelrt", "appcommon", "wire")
STALE = ROOT / "build" / "lib" / "appcommon" / "_removed_module.py"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout, as ``pip wheel`` builds it (setup.py's hook included)."""
    out = tmp_path_factory.mktemp("wheel")
    # what an earlier build of a module deleted since left in the checkout's build folder
    STALE.parent.mkdir(parents=True, exist_ok=True)
    STALE.write_text("LEFT_OVER = True\n")
    return build_wheel(ROOT, out)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That wheel installed into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--no-index", "--target", target, wheel)
    return target


def metadata_of(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(zf.read(name).decode())
    return {key: message.get_all(key) or [] for key in ("Version", "Requires-Dist")}


# ---------------------------------------------------------------- the version and its commit


def test_an_installed_wheel_knows_the_commit_it_was_built_from(
    installed: Path, tmp_path: Path
) -> None:
    live = git_version(ROOT)
    assert live is not None and live.startswith(f"{RELEASE}+g")
    # -S: no site-packages, so only the installed wheel is importable; cwd outside the checkout
    probe = (
        "import importlib.metadata as m, appcommon.version as v; "
        "print(v.__file__); print(v.code_version()); print(m.version('secagent'))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    where, version, dist_version = result.stdout.split()
    assert Path(where).is_relative_to(installed)
    assert version == dist_version == live


def test_the_wheel_holds_the_tracked_modules_and_the_build_info(wheel: Path) -> None:
    """Nothing stale from an earlier build (pip builds in the checkout's build/ folder)."""
    assert not STALE.exists()
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--", *PACKAGES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if ".dist-info/" not in n}
    assert shipped == {*tracked, "appcommon/_build_info.py"}


def test_an_editable_checkout_reports_its_live_commit() -> None:
    assert code_version() == git_version(ROOT)


def test_build_version_outside_a_checkout(tmp_path: Path) -> None:
    assert git_version(tmp_path) is None
    assert build_version(tmp_path) == RELEASE
    (tmp_path / "PKG-INFO").write_text(
        "Metadata-Version: 2.4\nName: secagent\nVersion: 0.1.0+gabc\n"
    )
    assert build_version(tmp_path) == "0.1.0+gabc"  # an sdist keeps the commit it was made from


# ---------------------------------------------------------------- ONNX Runtime: one extra


def test_onnx_runtime_is_an_extra_cpu_or_gpu(wheel: Path) -> None:
    requires = [Requirement(r) for r in metadata_of(wheel)["Requires-Dist"]]
    base = [r.name for r in requires if r.marker is None]
    assert base and not [name for name in base if name.startswith("onnxruntime")]

    def extra(name: str) -> list[str]:
        return [
            r.name
            for r in requires
            if r.marker is not None
            and r.marker.evaluate({"extra": name})
            and r.name.startswith("onnxruntime")
        ]

    assert extra("cpu") == ["onnxruntime"]
    assert extra("gpu") == ["onnxruntime-gpu"]
    assert extra("dev") == []


@pytest.mark.parametrize(
    ("installed", "import_error", "expected"),
    [
        ({"onnxruntime": "1.32.0"}, None, None),
        ({"onnxruntime-gpu": "1.31.1"}, None, None),
        ({}, "No module named 'onnxruntime'", "no ONNX Runtime is installed"),
        (
            {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"},
            None,
            "more than one ONNX Runtime is installed (onnxruntime 1.32.0, onnxruntime-gpu 1.31.1)",
        ),
        (
            {"onnxruntime-gpu": "1.31.1"},
            "libcudart.so.13: cannot open shared object file",
            "onnxruntime-gpu 1.31.1 is installed but cannot be imported: libcudart.so.13",
        ),
    ],
)
def test_runtime_problem(
    installed: dict[str, str], import_error: str | None, expected: str | None
) -> None:
    problem = runtime_problem(installed, import_error=import_error)
    if expected is None:
        assert problem is None
        return
    assert problem is not None and expected in problem
    assert INSTALL_HINT in problem


def test_the_agent_refuses_to_start_without_onnx_runtime(tmp_path: Path) -> None:
    """``import onnxruntime`` fails (a sitecustomize blocks it); ``secagent run`` says so and
    what to install, before it reads its config, with no traceback."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    result = subprocess.run(
        [SECAGENT, "run", "--config", tmp_path / "absent.yaml"],
        env={"PYTHONPATH": str(shim), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Error: " in result.stderr and "Traceback" not in result.stderr
    assert "cannot be imported: import of onnxruntime halted" in result.stderr
    assert "pip install 'secagent[cpu]' (onnxruntime) or 'secagent[gpu]'" in result.stderr
