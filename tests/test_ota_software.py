"""Agent software over the air, with real processes in a temporary prefix laid out as
deploy/install.sh lays it out (releases/<version>, current, previous) and started, as systemd
would, through deploy/secagent-launch, restarted whenever it exits non-zero:

- a release that crashes before running any of its own code is taken back by the launcher
  after its attempts, and the release before reports why;
- a real wheel of this checkout, signed and rolled out, is installed side by side, the agent
  restarts into it, it reports itself up, its trial ends, its probation passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from agent.ota import software
from demo.broker import Mosquitto
from tests.support import ROOT, wait_for
from tests.support.ota import OtaSite, StillFeeder, tiny_model
from tests.support.packaging import build_wheel

LAUNCHER = ROOT / "deploy" / "secagent-launch"


def release_dir(prefix: Path, name: str, script: str) -> None:
    """``releases/<name>/bin/secagent`` running ``script`` (sh)."""
    bin_dir = prefix / "releases" / name / "bin"
    bin_dir.mkdir(parents=True)
    program = bin_dir / "secagent"
    program.write_text("#!/bin/sh\n" + script + "\n")
    program.chmod(0o755)


def this_venv_release(prefix: Path, name: str = "v1") -> None:
    """A release that is this checkout's venv (the tests' own secagent)."""
    release_dir(prefix, name, f'exec "{Path(sys.executable).parent}/secagent" "$@"')
    (prefix / "current").symlink_to(f"releases/{name}")


class ServiceManager:
    """Starts ``secagent-launch run --config …`` again whenever it exits non-zero (as systemd's
    Restart=on-failure), and records every exit code."""

    def __init__(self, prefix: Path, config: Path, *, max_starts: int = 10) -> None:
        self.prefix, self.config, self.max_starts = prefix, config, max_starts
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        for start in range(self.max_starts):
            log = (self.config.parent / f"launch.{start}.log").open("wb")
            self.proc = subprocess.Popen(
                [str(LAUNCHER), "run", "--config", str(self.config), "--log-level", "info"],
                env={**os.environ, "SECAGENT_PREFIX": str(self.prefix)},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
            )
            log.close()
            code = self.proc.wait()
            self.exits.append(code)
            if code == 0 or self._stop.is_set():
                return

    def start(self) -> ServiceManager:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self._thread.join(timeout=60)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.config.parent.glob("launch.*.log"))
        )


def test_a_release_crashing_before_its_own_code_is_taken_back(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site = OtaSite(tmp_path / "site", broker)
    prefix = tmp_path / "opt"
    this_venv_release(prefix)
    release_dir(prefix, "v2", "exit 3")  # dies before any secagent code runs
    camera = tmp_path / "camera"
    StillFeeder(camera).write(2)
    config = site.agent_config(
        tmp_path / "agent",
        agent_id="launched",
        model=tiny_model(tmp_path / "models", "m", x=300),
        camera_dir=camera,
        ota={"software_prefix": str(prefix), "software_attempts": 2},
    )
    # what the agent does when it switches to an agent release (release id 42)
    software.begin_trial(prefix, candidate="releases/v2", release_id=42, attempts=2, deadline_s=600)
    assert os.readlink(prefix / "current") == "releases/v2"
    manager = ServiceManager(prefix, config)
    site.aggregator.start()
    try:
        manager.start()
        back = site.wait_report("launched", release_id=42, state="rolled_back")
    finally:
        manager.stop()
        site.aggregator.stop()
    assert manager.exits[:2] == [3, 3], manager.log()
    assert os.readlink(prefix / "current") == "releases/v1"
    assert not (prefix / "trial").exists() and not (prefix / "rolled-back").exists()
    assert "did not come up" in back["reason"] and "releases/v2" in back["reason"]


def test_an_agent_wheel_is_installed_side_by_side_and_taken_into_use(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site = OtaSite(tmp_path / "site", broker)
    wheel = build_wheel(ROOT, tmp_path / "wheel")
    release = site.add_release("agent", wheel, tag="agent-next")
    version = release["compat"]["version"]
    prefix = tmp_path / "opt"
    this_venv_release(prefix)
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera, every_s=0.2)
    feeder.write(2)
    config = site.agent_config(
        tmp_path / "agent",
        agent_id="upgraded",
        model=tiny_model(tmp_path / "models", "m", x=300),
        camera_dir=camera,
        ota={"software_prefix": str(prefix)},
    )
    manager = ServiceManager(prefix, config)
    site.aggregator.start()
    try:
        manager.start()
        feeder.start()
        wait_for(lambda: site.messages("upgraded"), timeout_s=60, what="the agent running")
        site.rollout(release["id"], "--agents", "upgraded", "--groups", "*")
        site.wait_report("upgraded", release_id=release["id"], state="committed", timeout_s=240)
        running = manager.proc
        assert running is not None and running.poll() is None
        cmdline = Path(f"/proc/{running.pid}/cmdline").read_bytes().split(b"\0")
        states = [r["state"] for r in site.reports("upgraded") if r["release_id"] == release["id"]]
    finally:
        feeder.stop()
        manager.stop()
        site.aggregator.stop()
    assert manager.exits[0] == 75, manager.log()  # the old release stopped to be restarted
    assert os.readlink(prefix / "current") == f"releases/{version}"
    assert os.readlink(prefix / "previous") == "releases/v1"
    assert not (prefix / "trial").exists()
    assert (prefix / "releases" / version / "bin" / "secagent").is_file()
    assert any(str(prefix / "releases" / version).encode() in part for part in cmdline), cmdline
    assert states == ["downloading", "verifying", "staged", "switching", "active", "committed"]
