"""Agent software updates: a secagent wheel installed side by side as ``deploy/install.sh``
installs a release (``<prefix>/releases/<version>`` with its own venv, ``current`` switched by
renaming a symlink, ``previous`` kept), then a restart into it through ``deploy/secagent-launch``,
which takes it back when it does not come up (docs/ota.md, "Agent software").

The trial file ``<prefix>/trial`` holds "attempts deadline previous candidate release_id"; the
launcher uses one attempt per start and restores ``previous`` when none is left or the deadline
passed, leaving the reason in ``<prefix>/rolled-back``. The new release removes the trial file
once it has reported itself active (:func:`commit`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from agent.ota.client import ReleaseRefused

COMPLETE = ".secagent-release-complete"
INSTALLED = ".installed"
"""deploy/install.sh's stamp of a complete release."""
DATA = ("models", "rules", "config", "README.md", "constraints.txt")
"""What deploy/install.sh puts in each release besides its venv: the configs it writes name
``<prefix>/current/models/...`` and ``<prefix>/current/rules/...``."""


@dataclass(frozen=True)
class Trial:
    attempts: int
    deadline: float
    previous: str
    candidate: str
    release_id: int


def wheel_version(wheel: Path) -> str:
    """The version of a secagent wheel; ReleaseRefused when it is not one."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            if name is None:
                raise ReleaseRefused("invalid_software", f"{wheel.name} has no METADATA")
            meta = Parser().parsestr(zf.read(name).decode("utf-8", "replace"))
    except zipfile.BadZipFile as exc:
        raise ReleaseRefused("invalid_software", f"not a wheel: {exc}") from exc
    if (meta.get("Name") or "").lower() != "secagent":
        raise ReleaseRefused("invalid_software", f"a wheel of {meta.get('Name')!r}")
    version = meta.get("Version") or ""
    if not version or "/" in version or version.startswith("."):
        raise ReleaseRefused("invalid_software", f"version {version!r}")
    return version


def install(wheel: Path, *, prefix: Path, version: str, pip_args: list[str]) -> Path:
    """``<prefix>/releases/<version>``: a venv (made at its final path, since a venv's scripts
    name their interpreter by path) with the wheel installed. With no ``pip_args``, the
    dependencies are those of the running release (a ``.pth`` names its site-packages) and only
    the wheel is installed; otherwise pip installs it with them (e.g. ``--no-index
    --find-links=DIR`` and a wheelhouse). The running release's data (:data:`DATA`) is copied
    in, since a wheel has none, and the release is made readable by all, as install.sh's are.
    Idempotent; a half-made folder is made again; a complete release of that version (made by
    install.sh or an earlier update) is used as it is; the running version is refused."""
    release = prefix / "releases" / version
    if current(prefix) == f"releases/{version}":
        raise ReleaseRefused("same_version", f"version {version} is the release running")
    if (release / COMPLETE).is_file() or (release / INSTALLED).is_file():
        return release
    shutil.rmtree(release, ignore_errors=True)
    release.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(release)], what="creating the venv")
    python = release / "bin" / "python"
    args = list(pip_args)
    if not args:
        site = Path(
            _run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                what="reading the venv",
            ).strip()
        )
        (site / "_secagent_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        args = ["--no-deps"]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "-q",
            "--disable-pip-version-check",
            "--python",
            str(python),
            "install",
            *args,
            str(wheel),
        ],
        what="installing the wheel",
    )
    if not (release / "bin" / "secagent").is_file():
        raise ReleaseRefused("install_failed", f"no bin/secagent in {release}")
    try:
        _copy_data(prefix / "current", release)
        _readable_by_all(release)
    except OSError as exc:
        raise ReleaseRefused("install_failed", f"completing {release}: {exc}") from exc
    (release / COMPLETE).write_text(version + "\n")
    return release


def _copy_data(running: Path, release: Path) -> None:
    for name in DATA:
        source = running / name
        if source.is_dir():
            shutil.copytree(source, release / name, symlinks=True, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copyfile(source, release / name)


def _readable_by_all(release: Path) -> None:
    """u+rwX,go+rX, whatever the agent's umask (its unit has 0027): on a host that runs both,
    secagg runs from ``current`` too, as its own user."""
    for path in [release, *release.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        executable = path.is_dir() or mode & 0o100
        path.chmod(mode | 0o644 | (0o111 if executable else 0))


def _run(cmd: list[str], *, what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseRefused("install_failed", f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise ReleaseRefused("install_failed", f"{what}: {done.stderr.strip()[-1000:]}")
    return done.stdout


def _link(prefix: Path, name: str, target: str) -> None:
    tmp = prefix / f".{name}.ota"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, prefix / name)


def current(prefix: Path) -> str | None:
    link = prefix / "current"
    return os.readlink(link) if link.is_symlink() else None


def begin_trial(
    prefix: Path, *, candidate: str, release_id: int, attempts: int, deadline_s: float
) -> str:
    """Write the trial file, then switch ``current`` to ``candidate`` (``releases/<v>``) and
    ``previous`` to what it was; returns that previous target."""
    previous = current(prefix)
    if previous is None:
        raise ReleaseRefused("not_installed", f"{prefix}/current is not a symlink")
    line = f"{attempts} {int(time.time() + deadline_s)} {previous} {candidate} {release_id}\n"
    tmp = prefix / ".trial.ota"
    tmp.write_text(line)
    os.replace(tmp, prefix / "trial")
    _link(prefix, "previous", previous)
    _link(prefix, "current", candidate)
    return previous


def read_trial(prefix: Path) -> Trial | None:
    try:
        attempts, deadline, previous, candidate, release_id = (prefix / "trial").read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    return Trial(int(attempts), float(deadline), previous, candidate, int(release_id))


def commit(prefix: Path) -> None:
    """The new release is healthy: no more trial."""
    (prefix / "trial").unlink(missing_ok=True)


def abandon(prefix: Path, trial: Trial, reason: str) -> None:
    """Take the trial back from inside (the new release found itself unhealthy): ``current``
    to the previous release, the reason left as the launcher leaves it."""
    _link(prefix, "current", trial.previous)
    (prefix / "rolled-back").write_text(f"{trial.release_id} {reason}\n")
    commit(prefix)


def take_rolled_back(prefix: Path) -> tuple[int, str] | None:
    """What the launcher rolled back, and why (consumed: reported once)."""
    path = prefix / "rolled-back"
    try:
        release_id, _, reason = path.read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return (int(release_id), reason) if release_id.isdigit() else None
