"""deploy/install.sh as an operator runs it on a camera host: a release in its own venv with
only the agent's dependencies (from the package registry, as on a real host), configs kept
across installs, ``current`` switched atomically, rollback, and units that systemd accepts.

The install goes into temporary folders (``--prefix``, ``--etc``, ``--units``), without
system users or systemctl; tests/docker/ runs the same script in a container under systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from tests.support.packaging import build_wheel

INSTALL = ROOT / "deploy" / "install.sh"
AGGREGATOR_ONLY = ("fastapi", "uvicorn", "starlette", "matplotlib", "sqlite_utils", "httpx")
LEAN_PACKAGES = ("agent", "modelrt", "wire", "appcommon")


@dataclass
class Host:
    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def units(self) -> Path:
        return self.root / "units"

    def bin(self, name: str) -> Path:
        return self.prefix / "current" / "bin" / name

    def install(self, *args: str | Path) -> str:
        done = subprocess.run(
            [
                "bash",
                str(INSTALL),
                "--prefix",
                str(self.prefix),
                "--etc",
                str(self.etc),
                "--units",
                str(self.units),
                "--no-users",
                "--no-systemd",
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def run(self, program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin(program)), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.root)},
        )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This checkout's wheel, and one of a later commit (a clone with one more commit)."""
    base = tmp_path_factory.mktemp("wheels")
    first = build_wheel(ROOT, base / "first")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(clone),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "a later release",
        ],
        check=True,
    )
    second = build_wheel(clone, base / "second")
    return first, second


@pytest.fixture(scope="module")
def host(wheels: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Host:
    """A camera host with the agent installed from the first wheel."""
    h = Host(tmp_path_factory.mktemp("camera-host"))
    h.install("--role", "agent", "--ort", "cpu", "--wheel", wheels[0])
    return h


def version_of(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def test_a_release_with_its_own_venv_and_current_pointing_at_it(
    host: Host, wheels: tuple[Path, Path]
) -> None:
    version = version_of(wheels[0])
    release = host.prefix / "releases" / version
    assert os.readlink(host.prefix / "current") == f"releases/{version}"
    assert (release / "bin" / "python").exists() and (release / "pyvenv.cfg").exists()
    # the data the configs name lives in the release: models/ and rules/
    assert (release / "models" / "fall-detection-yolov8.yaml").is_file()
    assert (release / "rules" / "default.yaml").is_file()
    assert host.run("secagent", "--version").stdout.strip().endswith(version)


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of ``name==version`` lines (names normalised as pip does)."""
    found = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_every_package_of_the_release_is_pinned_by_the_constraints(host: Host) -> None:
    frozen = host.run("python", "-m", "pip", "freeze", "--exclude", "secagent")
    installed = pins(frozen.stdout.splitlines())
    wanted = pins((ROOT / "constraints.txt").read_text().splitlines())
    wanted |= pins((ROOT / "requirements-model.txt").read_text().splitlines())
    assert installed and {n: v for n, v in installed.items() if wanted.get(n) != v} == {}


def test_the_agent_runs_without_the_aggregator_packages(host: Host) -> None:
    site = subprocess.run(
        [str(host.bin("python")), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    installed = {p.name.split("-")[0].lower() for p in Path(site).glob("*.dist-info")}
    assert "onnxruntime" in installed and "paho_mqtt" in installed
    assert not {name.lower() for name in AGGREGATOR_ONLY} & {n.replace("-", "_") for n in installed}
    # every module of the agent and what it stands on imports in that venv
    probe = (
        "import importlib, pkgutil\n"
        f"for top in {LEAN_PACKAGES!r}:\n"
        "    pkg = importlib.import_module(top)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, top + '.'):\n"
        "        if not m.name.endswith('.__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "print('imported')\n"
    )
    imported = host.run("python", "-c", probe)
    assert imported.stdout.strip() == "imported", imported.stderr
    assert host.run("secagent", "--help").returncode == 0
    # the example as installed names a recording that is not on this host: refused until edited
    example = host.etc / "secagent.yaml"
    refused_video = host.run("secagent", "check-config", "--config", example)
    assert refused_video.returncode == 1
    assert "camera backyard: video /var/lib/secagent/recordings/backyard.mp4 does not exist" in (
        refused_video.stderr
    )
    doc = yaml.safe_load(example.read_text())
    doc["cameras"] = [c for c in doc["cameras"] if c["name"] != "backyard"]
    edited = host.etc / "secagent-edited.yaml"
    edited.write_text(yaml.safe_dump(doc))
    checked = host.run("secagent", "check-config", "--config", edited)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"ok: {edited}")
    # a real ONNX Runtime session with the sample model, in the lean venv
    model = host.prefix / "current" / "models" / "fall-detection-yolov8.yaml"
    detected = host.run("secagent", "detect", "--model", model)
    assert '"layout": "yolov8"' in detected.stdout, detected.stderr
    # secagg says what it needs instead of a traceback
    refused = host.run("secagg", "check-config", "--config", host.etc / "secagent.yaml")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "pip install 'secagent[aggregator,cpu]'" in refused.stderr


def test_configs_are_kept_the_release_switches_and_rolls_back(
    host: Host, wheels: tuple[Path, Path]
) -> None:
    first, second = (version_of(w) for w in wheels)
    config = host.etc / "secagent.yaml"
    config.write_text(config.read_text() + "# edited by the operator\n")
    again = host.install("--role", "agent", "--ort", "cpu", "--wheel", wheels[0])
    assert f"release {first} is already installed" in again
    assert "kept" in again and config.read_text().endswith("# edited by the operator\n")
    assert (host.etc / "secagent.yaml.example").is_file()

    host.install("--role", "agent", "--ort", "cpu", "--wheel", wheels[1])
    assert os.readlink(host.prefix / "current") == f"releases/{second}"
    assert os.readlink(host.prefix / "previous") == f"releases/{first}"
    assert host.run("secagent", "--version").stdout.strip().endswith(second)
    assert config.read_text().endswith("# edited by the operator\n")
    assert not list(host.prefix.glob(".current*"))  # the new link was renamed into place

    host.install("--rollback")
    assert os.readlink(host.prefix / "current") == f"releases/{first}"
    assert host.run("secagent", "--version").stdout.strip().endswith(first)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_installed_unit(host: Host) -> None:
    unit = host.units / "secagent.service"
    text = unit.read_text()
    assert f"ExecStart={host.prefix}/secagent-launch run --config {host.etc}" in text
    assert f"Environment=SECAGENT_PREFIX={host.prefix}\n" in text
    assert f"ReadWritePaths={host.prefix}\n" in text
    assert os.access(host.prefix / "secagent-launch", os.X_OK)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
