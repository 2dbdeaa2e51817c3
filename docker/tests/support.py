"""Docker and docker-compose for the stack and systemd tests: Debian's docker.io client (with
BuildKit) and docker-compose 1.29, run as programs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
SCALE_COMPOSE_FILE = ROOT / "docker" / "compose.scale.yaml"


def docker(*args: str, check: bool = True, timeout_s: float = 300) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


def inspect(name: str, template: str) -> str:
    return docker("inspect", "-f", template, name).strip()


class Compose:
    """One compose project (its own containers, network and volumes) of one compose file."""

    def __init__(self, project: str, env: dict[str, str], *, file: Path = COMPOSE_FILE) -> None:
        self.project = project
        self.env = {**os.environ, **env}
        self.file = file

    def __call__(self, *args: str, check: bool = True, timeout_s: float = 300) -> str:
        done = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", str(self.file), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self.env,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    @property
    def network(self) -> str:
        """The project's default network (docker-compose 1.29's name for it)."""
        return f"{self.project}_default"

    def health(self, service: str) -> str:
        return inspect(self.container(service), "{{.State.Health.Status}}")

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        return self(*["exec", "-T", service, *command], check=check)

    def logs(self, service: str, index: int = 1) -> str:
        """Everything the service's container wrote (all its runs), stdout and stderr."""
        done = subprocess.run(
            [DOCKER, "logs", self.container(service, index)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout + done.stderr

    def mails(self) -> list[str]:
        """The subjects of the emails in the mail sink's Maildir."""
        out = self.exec(
            "mailsink",
            "/opt/mailsink/bin/python",
            "-c",
            "import mailbox, json; print(json.dumps([m['Subject'] for m in "
            "mailbox.Maildir('/var/mail/sink', create=False)]))",
        )
        return list(json.loads(out))

    def agent_health(self) -> dict[str, object]:
        out = self.exec(
            "secagent",
            "secagent",
            "health",
            "--file",
            "/run/secagent/health.json",
            "--allow-broker-down",
            check=False,
        )
        return json.loads(out) if out.strip().startswith("{") else {}
