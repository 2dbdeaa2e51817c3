"""systemd runs secagent and secagg as on a real host: a container with systemd as PID 1 and
Mosquitto, deploy/install.sh installs a release (from the package registry), and
``systemctl start secagg secagent`` brings both up (Type=notify: it returns once they are
READY). The units pass ``systemd-analyze verify``, the watchdog is fed, a stuck detection
worker gets the agent restarted by the watchdog, and ``systemctl stop`` ends both with exit 0.

Agent software over the air, under systemd: secagg signs and rolls out secagent wheels (later
commits of this checkout); the agent, sandboxed by its unit, installs each beside the
installed release, switches ``current`` and exits 75; systemd starts it again through
``secagent-launch``. A release that crashes at start is taken back after its attempts, and the
release before comes back and reports; a good one is taken into use and committed.

Run by ``make docker-test``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from demo.footage import sample_clip
from docker.tests.support import DOCKER, ROOT, docker
from tests.support import wait_for
from tests.support.models import stalling_model
from tests.support.packaging import build_wheel

IMAGE = "secagent/systemd-host:test"
CA = Path("/etc/ssl/certs/ca-certificates.crt")


class Host:
    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, *, check: bool = True, timeout_s: float = 600) -> str:
        done = subprocess.run(
            [DOCKER, "exec", "-e", "PIP_CERT=/host-ca.crt", self.name, "bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{script}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    _token: str | None = None

    def api(self, path: str) -> Any:
        """The aggregator's answer to GET ``path`` with a viewer token (None when it does not
        answer 200)."""
        if self._token is None:  # a viewer token, made as the service's user (its store)
            out = self.sh(
                "runuser -u secagg -- /opt/secagent/current/bin/secagg token create "
                "--name systemd-test --role viewer --config /etc/secagent/secagg.yaml",
                check=False,
            )
            found = [line for line in out.splitlines() if line.startswith("sga_")]
            if not found:
                return None
            self._token = found[-1]
        out = self.sh(
            '/usr/bin/python3 -c "import urllib.request; print(urllib.request.'
            f"urlopen(urllib.request.Request('http://127.0.0.1:8080{path}', headers="
            f"{{'Authorization': 'Bearer {self._token}'}}), timeout=5).read().decode())\"",
            check=False,
        )
        return json.loads(out) if out.strip()[:1] in ("{", "[") else None

    def api_health(self) -> dict[str, Any]:
        return dict(self.api("/api/health") or {})


AGENT_CONFIG = """agent_id: systemd-host
mqtt: {{host: 127.0.0.1, port: 1883, status_interval_s: 5}}
detect: {{model: {model}, providers: [CPUExecutionProvider]}}
rules: /opt/secagent/current/rules/default.yaml
outbox: {{path: /var/lib/secagent/outbox.sqlite}}
cameras:
{cameras}"""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    wheels = list((ROOT / "docker" / "dist").glob("secagent-*.whl"))
    if not wheels:
        pytest.fail("no wheel in docker/dist: run docker/build.sh (make docker-test)")
    docker(
        "build",
        "-q",
        "--build-arg",
        "BASE=secagent/debian:bookworm",
        "-t",
        IMAGE,
        "-f",
        str(ROOT / "docker" / "tests" / "systemd-host.Dockerfile"),
        str(ROOT / "docker" / "tests"),
        timeout_s=600,
    )
    name = "secagent-systemd-test"
    docker("rm", "-f", name, check=False)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-v",
        f"{ROOT}:/src:ro",
        "-v",
        f"{CA}:/host-ca.crt:ro",
        IMAGE,
    )
    h = Host(name)
    try:
        wait_for(
            lambda: h.sh("systemctl is-system-running || true").strip() in ("running", "degraded"),
            timeout_s=120,
            what="systemd up in the container",
        )
        # what an operator runs
        h.sh(
            "cd /src && bash deploy/install.sh --role all --ort cpu"
            f" --wheel /src/docker/dist/{wheels[0].name}"
        )
        work = tmp_path_factory.mktemp("systemd")
        shutil.copy(sample_clip(ROOT / "var" / "cache"), work / "sample.avi")
        model = stalling_model(work / "stalling.onnx")
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        (work / "stalling.yaml").write_text(
            "name: stalling\nfile: /opt/secagent/test/stalling.onnx\n"
            f"sha256: {sha}\nlayout: yolov8\n"
        )
        docker("cp", f"{work}/.", f"{name}:/opt/secagent/test")
        h.sh("chmod -R a+rX /opt/secagent/test")
        yield h
    finally:
        if not os.environ.get("SECAGENT_KEEP_CONTAINER"):
            docker("rm", "-f", name, check=False)


def write_agent_config(host: Host, *, model: str, cameras: str) -> None:
    config = AGENT_CONFIG.format(model=model, cameras=cameras)
    host.sh(
        f"cat > /etc/secagent/secagent.yaml <<'EOF'\n{config}EOF\n"
        "chgrp secagent /etc/secagent/secagent.yaml"
    )


def test_the_units_verify(host: Host) -> None:
    out = host.sh(
        "systemd-analyze verify /etc/systemd/system/secagent.service"
        " /etc/systemd/system/secagg.service 2>&1"
    )
    assert "secagent.service" not in out and "secagg.service" not in out, out
    # secagg in separate processes (docs/scale.md): installed beside it, not started
    split = host.sh(
        "cp /etc/systemd/system/secagg-ingest@.service /run/secagg-ingest@1.service"
        " && systemd-analyze verify /etc/systemd/system/secagg-api.service"
        " /run/secagg-ingest@1.service 2>&1; rm -f /run/secagg-ingest@1.service"
    )
    assert "secagg-api.service" not in split and "secagg-ingest" not in split, split
    enabled = host.sh("systemctl is-enabled secagg-api.service 2>&1 || true")
    assert enabled.strip() == "disabled", enabled


def test_systemctl_start_brings_both_up_ready_and_fed(host: Host) -> None:
    write_agent_config(
        host,
        model="/opt/secagent/current/models/fall-detection-yolov8.yaml",
        cameras=(
            "  - name: yard\n"
            "    source: {type: video, path: /opt/secagent/test/sample.avi, fps: 2}\n"
        ),
    )
    host.sh("systemctl start secagg secagent", timeout_s=300)  # returns once both said READY=1
    for unit in ("secagg", "secagent"):
        state = host.show(unit, "ActiveState", "SubState", "StatusText", "WatchdogUSec", "User")
        assert state["ActiveState"] == "active" and state["SubState"] == "running", state
        assert state["WatchdogUSec"] == "30s" and state["User"] == unit
        assert state["StatusText"], state
    # the pipeline runs: threats reach the aggregator through the broker
    wait_for(
        lambda: int(host.api_health().get("messages", 0)) > 0, timeout_s=180, what="threats stored"
    )
    assert "broker connected" in host.show("secagent", "StatusText")["StatusText"]
    first = host.show("secagent", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    wait_for(
        lambda: (
            host.show("secagent", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
            != first
        ),
        timeout_s=60,
        what="a watchdog ping",
    )


def test_hardening_as_rated_on_the_running_host(host: Host) -> None:
    for unit, most in (("secagg", 3.0), ("secagent", 2.0)):
        out = host.sh(f"systemd-analyze security --no-pager {unit}.service")
        rating = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
        assert rating <= most, out


def test_systemctl_stop_ends_both_with_exit_0(host: Host) -> None:
    host.sh("systemctl stop secagent secagg", timeout_s=120)
    for unit in ("secagent", "secagg"):
        state = host.show(unit, "Result", "ExecMainStatus", "ExecMainCode")
        assert state["Result"] == "success" and state["ExecMainStatus"] == "0", state
    journal = host.sh("journalctl -u secagg -u secagent --no-pager -o cat")
    assert "stopped cleanly" in journal
    assert not host.sh(
        "ls /var/lib/secagg/ /var/lib/private/secagg/ 2>/dev/null | grep -- -wal || true"
    ).strip()


def test_the_watchdog_restarts_a_stuck_agent(host: Host) -> None:
    host.sh(
        "mkdir -p /etc/systemd/system/secagent.service.d /srv/incoming"
        " && chown secagent /srv/incoming"
        " && printf '[Service]\\nWatchdogSec=4\\nReadWritePaths=/srv/incoming\\n'"
        " > /etc/systemd/system/secagent.service.d/test.conf && systemctl daemon-reload"
    )
    write_agent_config(
        host,
        model="/opt/secagent/test/stalling.yaml",
        cameras=(
            "  - name: door\n    source: {type: directory, path: /srv/incoming}\n"
            "    motion: {enabled: false}\n"
        ),
    )
    host.sh("systemctl start secagent", timeout_s=300)
    # a bright still: the model sticks on it, the pings stop, systemd kills and restarts it
    host.sh(
        '/opt/secagent/current/bin/python -c "import numpy, cv2; '
        "cv2.imwrite('/srv/incoming/bright.jpg', numpy.full((480, 640, 3), 255, numpy.uint8))\""
    )
    wait_for(
        lambda: int(host.show("secagent", "NRestarts")["NRestarts"]) >= 1,
        timeout_s=120,
        what="a restart by the watchdog",
    )
    journal = host.sh("journalctl -u secagent --no-pager -o cat")
    assert "Watchdog timeout" in journal and "detection worker stuck" in journal, journal[-3000:]
    host.sh(
        "systemctl stop secagent && rm -r /etc/systemd/system/secagent.service.d"
        " && systemctl daemon-reload"
    )


# agent software over the air -----------------------------------------------------------------
SECAGG = "runuser -u secagg -- /opt/secagent/current/bin/secagg"
SECAGG_CONFIG = "--config /etc/secagent/secagg.yaml"
KEYS = "/var/lib/secagg/offline-keys"
OTA_AGENT = """ota:
  enabled: true
  url: http://127.0.0.1:8080/ota/v1
  trusted_root: /etc/secagent/ota-root.json
  token_file: /etc/secagent/ota-token
  state_dir: /var/lib/secagent/ota-state
  software_prefix: /opt/secagent
  software_attempts: 2
  probation_s: 10
  check_interval_s: 2
"""
OTA_SECAGG = (
    "ota: {enabled: true, refresh_interval_s: 1, repo_dir: /var/lib/secagg/ota,"
    " online_key: /var/lib/secagg/ota-keys/online.pem,"
    " token_secret_file: /var/lib/secagg/ota-keys/token-secret}\n"
)
RUN_BODY = "    from agent.liveness import Supervisor\n"
CANNOT_START = "    raise SystemExit(3)  # this release cannot start\n"


def _commit(clone: Path, message: str) -> None:
    subprocess.run(
        ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.org",
         "commit", "-q", "-a", "--allow-empty", "-m", message],
        check=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def agent_wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two later releases of this checkout's HEAD: ``broken`` (``secagent run`` exits 3 at
    once; ``--version`` answers, so it passes the agent's checks) and ``good`` (one commit
    more, nothing else)."""
    base = tmp_path_factory.mktemp("agent-wheels")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    cli = clone / "agent" / "cli.py"
    text = cli.read_text()
    assert RUN_BODY in text
    cli.write_text(text.replace(RUN_BODY, CANNOT_START + RUN_BODY, 1))
    _commit(clone, "a release whose secagent run cannot start")
    broken = build_wheel(clone, base / "broken")
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "HEAD~1", "--", "."], check=True)
    _commit(clone, "a later, good release")
    good = build_wheel(clone, base / "good")
    return {"broken": broken, "good": good}


def version_of(wheel: Path) -> str:
    return wheel.name.split("-")[1]


@pytest.fixture(scope="module")
def ota_host(host: Host, agent_wheels: dict[str, Path]) -> Host:
    """secagg with a signed release repository in its state folder, and the agent following
    it, started by its unit (through secagent-launch), on the sample clip."""
    host.sh("systemctl stop secagent secagg")
    host.sh(f"cat >> /etc/secagent/secagg.yaml <<'EOF'\n{OTA_SECAGG}EOF")
    host.sh(f"{SECAGG} ota init --keys {KEYS} {SECAGG_CONFIG}")
    host.sh(
        f"install -m 0644 {KEYS}/root.json /etc/secagent/ota-root.json"
        f" && {SECAGG} ota token systemd-host {SECAGG_CONFIG} > /etc/secagent/ota-token"
        " && chgrp secagent /etc/secagent/ota-token && chmod 0640 /etc/secagent/ota-token"
    )
    host.sh("mkdir -p /var/lib/secagg/wheels")
    for wheel in agent_wheels.values():
        docker("cp", str(wheel), f"{host.name}:/var/lib/secagg/wheels/{wheel.name}")
    host.sh("chown -R secagg: /var/lib/secagg/wheels")
    write_agent_config(
        host,
        model="/opt/secagent/current/models/fall-detection-yolov8.yaml",
        cameras=(
            "  - name: yard\n"
            "    source: {type: video, path: /opt/secagent/test/sample.avi, fps: 2}\n" + OTA_AGENT
        ),
    )
    host.sh("systemctl reset-failed secagent; systemctl start secagg secagent", timeout_s=300)
    wait_for(
        lambda: (host.api("/api/agents/systemd-host") or {}).get("state") == "online",
        timeout_s=120,
        what="the agent known to secagg",
    )
    return host


def roll_out(host: Host, wheel: Path, tag: str) -> int:
    added = host.sh(
        f"{SECAGG} release add agent /var/lib/secagg/wheels/{wheel.name}"
        f" --targets-key {KEYS}/targets.pem --tag {tag} {SECAGG_CONFIG}"
    )
    release_id = int(json.loads(added.strip().splitlines()[-1])["id"])
    host.sh(
        f"{SECAGG} rollout create {release_id} --agents systemd-host --groups '*' {SECAGG_CONFIG}"
    )
    return release_id


def report(host: Host, release_id: int, state: str) -> dict[str, Any] | None:
    history = host.api("/api/agents/systemd-host/history") or {"reports": []}
    return next(
        (r for r in history["reports"] if r["release_id"] == release_id and r["state"] == state),
        None,
    )


def installed_version() -> str:
    (wheel,) = (ROOT / "docker" / "dist").glob("secagent-*.whl")
    return version_of(wheel)


def status_after(host: Host, at: str) -> dict[str, Any] | None:
    """The agent's record once it is online with a status sent after ``at`` (ISO 8601)."""
    agent = host.api("/api/agents/systemd-host") or {}
    last = agent.get("last_status_at")
    if agent.get("state") != "online" or not last:
        return None
    return agent if datetime.fromisoformat(last) > datetime.fromisoformat(at) else None


def test_an_agent_release_that_crashes_at_start_is_taken_back(
    ota_host: Host, agent_wheels: dict[str, Path]
) -> None:
    host, installed = ota_host, installed_version()
    restarts = int(host.show("secagent", "NRestarts")["NRestarts"])
    release_id = roll_out(host, agent_wheels["broken"], "broken-1")
    back = wait_for(
        lambda: report(host, release_id, "rolled_back"), timeout_s=300, what="rolled_back"
    )
    assert "did not come up: it exited at every start" in back["reason"], back
    broken = version_of(agent_wheels["broken"])
    assert host.sh("readlink /opt/secagent/current").strip() == f"releases/{installed}"
    assert not host.sh("ls /opt/secagent/trial /opt/secagent/rolled-back 2>/dev/null || true")
    # systemd restarted it: once into the new release (exit 75), twice more after it crashed
    state = host.show("secagent", "ActiveState", "SubState", "NRestarts", "MainPID")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert int(state["NRestarts"]) == restarts + 3, state
    journal = host.sh("journalctl -u secagent --no-pager -o cat")
    assert "status=75/TEMPFAIL" in journal and "status=3/NOTIMPLEMENTED" in journal, journal[-3000:]
    assert "secagent-launch: the new release did not come up" in journal
    # the release before is back, healthy: online again, its status naming its version
    agent = wait_for(
        lambda: status_after(host, back["at"]), timeout_s=120, what="a status after the rollback"
    )
    assert agent["versions"]["code"] == installed, agent
    owner = host.sh(f"stat -c %U /opt/secagent/releases/{broken} /opt/secagent/secagent-launch")
    assert owner.split() == ["secagent", "root"]


def test_a_good_agent_release_is_taken_into_use(
    ota_host: Host, agent_wheels: dict[str, Path]
) -> None:
    host, installed, good = ota_host, installed_version(), version_of(agent_wheels["good"])
    # here the two updates come a minute apart, not months: the start limit would still count
    # the first one's restarts
    host.sh("systemctl reset-failed secagent")
    restarts = int(host.show("secagent", "NRestarts")["NRestarts"])
    release_id = roll_out(host, agent_wheels["good"], "good-1")
    committed = wait_for(
        lambda: report(host, release_id, "committed"), timeout_s=300, what="committed"
    )
    assert host.sh("readlink /opt/secagent/current").strip() == f"releases/{good}"
    assert host.sh("readlink /opt/secagent/previous").strip() == f"releases/{installed}"
    state = host.show("secagent", "ActiveState", "SubState", "NRestarts", "MainPID")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert int(state["NRestarts"]) == restarts + 1, state  # the exit 75 into the new release
    cmdline = host.sh(f"tr '\\0' ' ' < /proc/{state['MainPID']}/cmdline")
    assert f"/opt/secagent/releases/{good}/bin/python" in cmdline, cmdline
    agent = wait_for(
        lambda: status_after(host, committed["at"]), timeout_s=120, what="a status after commit"
    )
    assert agent["versions"]["code"] == good, agent
    # the release holds the installation's data, and secagg (same host) can run from it
    host.sh(f"test -f /opt/secagent/releases/{good}/models/fall-detection-yolov8.yaml")
    assert good in host.sh("runuser -u secagg -- /opt/secagent/current/bin/secagg --version")
