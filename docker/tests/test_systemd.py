"""systemd runs secagent and secagg as on a real host: a container with systemd as PID 1 and
Mosquitto, deploy/install.sh installs a release (from the package registry), and
``systemctl start secagg secagent`` brings both up (Type=notify: it returns once they are
READY). The units pass ``systemd-analyze verify``, the watchdog is fed, a stuck detection
worker gets the agent restarted by the watchdog, and ``systemctl stop`` ends both with exit 0.

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
from pathlib import Path
from typing import Any

import pytest

from demo.footage import sample_clip
from docker.tests.support import DOCKER, ROOT, docker
from tests.support import wait_for
from tests.support.models import stalling_model

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

    def api_health(self) -> dict[str, Any]:
        if self._token is None:  # a viewer token, made as the service's user (its store)
            out = self.sh(
                "runuser -u secagg -- /opt/secagent/current/bin/secagg token create "
                "--name systemd-test --role viewer --config /etc/secagent/secagg.yaml",
                check=False,
            )
            found = [line for line in out.splitlines() if line.startswith("sga_")]
            if not found:
                return {}
            self._token = found[-1]
        out = self.sh(
            '/opt/secagent/current/bin/python -c "import urllib.request; print(urllib.request.'
            "urlopen(urllib.request.Request('http://127.0.0.1:8080/api/health', headers="
            f"{{'Authorization': 'Bearer {self._token}'}}), timeout=5).read().decode())\"",
            check=False,
        )
        return json.loads(out) if out.strip().startswith("{") else {}


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
