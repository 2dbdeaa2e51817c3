"""The images docker/build.sh made: exactly the pinned packages, a user, a health check and
volumes; the GPU image's ONNX Runtime loads (and falls back to the CPU on a host without a
GPU, as here); the PostgreSQL image initialises its database once."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from docker.tests.support import ROOT, docker, inspect
from tests.support import wait_for

PIP = {
    "agent": "/opt/secagent/bin/pip",
    "agent-gpu": "/opt/secagent/bin/pip",
    "aggregator": "/opt/secagent/bin/pip",
    "mailsink": "/opt/mailsink/bin/pip",
}
MODEL = "/opt/secagent/current/models/fall-detection-yolov8.yaml"


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


@pytest.mark.parametrize("image", sorted(PIP))
def test_images_hold_exactly_the_pinned_packages(image: str) -> None:
    frozen = docker(
        "run", "--rm", "--entrypoint", PIP[image], f"secagent/{image}:local",
        "freeze", "--exclude", "secagent",
    )  # fmt: skip
    wanted = pins((ROOT / "constraints.txt").read_text().splitlines())
    wanted |= pins((ROOT / "requirements-model.txt").read_text().splitlines())
    installed = pins(frozen.splitlines())
    assert installed and {n: v for n, v in installed.items() if wanted.get(n) != v} == {}


@pytest.mark.parametrize(
    "image", ["agent", "agent-gpu", "aggregator", "mosquitto", "mailsink", "postgres"]
)
def test_images_run_as_a_user_with_a_health_check_and_volumes(image: str) -> None:
    config = json.loads(
        docker("image", "inspect", "-f", "{{json .Config}}", f"secagent/{image}:local")
    )
    assert config["User"] not in ("", "root", "0")
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Volumes"]


@pytest.mark.parametrize(
    ("image", "runtime"), [("agent", "onnxruntime"), ("agent-gpu", "onnxruntime-gpu")]
)
def test_the_agent_images_load_the_sample_model(image: str, runtime: str) -> None:
    out = docker("run", "--rm", f"secagent/{image}:local", "detect", "--model", MODEL)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["layout"] == "yolov8" and summary["provider"] == "CPUExecutionProvider"
    listed = docker(
        "run", "--rm", "--entrypoint", PIP[image], f"secagent/{image}:local", "list"
    )  # fmt: skip
    assert re.search(rf"^{runtime}\s", listed, flags=re.MULTILINE)
    if image == "agent-gpu":
        providers = docker(
            "run", "--rm", "--entrypoint", "python3", f"secagent/{image}:local", "-c",
            "import onnxruntime; print(onnxruntime.get_available_providers())",
        )  # fmt: skip
        assert "CUDAExecutionProvider" in providers


def test_the_postgres_image_makes_its_database_once_and_keeps_it(tmp_path: Path) -> None:
    """First start: a cluster, the user (password from a file) and its database; a restart
    keeps them; a wrong password is refused; SIGINT (its stop signal) ends it with exit 0."""
    secret = tmp_path / "password"
    secret.write_text("s3cret 'with' quotes")
    secret.chmod(0o644)
    name = f"secagent-pgtest-{os.getpid()}"
    docker(
        "run", "-d", "--name", name, "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/pw",
        "-v", f"{secret}:/run/secrets/pw:ro", "secagent/postgres:local",
    )  # fmt: skip
    try:

        def sql(password: str, query: str) -> str:
            return docker(
                "exec", "-e", f"PGPASSWORD={password}", name, "psql", "-qAt", "-h", "127.0.0.1",
                "-U", "secagg", "-d", "secagg", "-c", query, check=False,
            )  # fmt: skip

        def healthy() -> bool:
            return inspect(name, "{{.State.Health.Status}}") == "healthy"

        wait_for(healthy, timeout_s=90, what="postgres healthy")
        assert "postgres-init: cluster made" in docker("logs", name)
        sql(secret.read_text(), "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        assert sql("wrong", "SELECT 1") == ""  # refused (scram-sha-256)
        assert docker("exec", name, "id", "-un").strip() == "postgres"
        docker("stop", "-t", "30", name)
        assert inspect(name, "{{.State.ExitCode}}") == "0"
        docker("start", name)
        wait_for(healthy, timeout_s=90, what="postgres healthy again")
        assert sql(secret.read_text(), "SELECT n FROM kept").strip() == "42"
        assert docker("logs", name).count("postgres-init: cluster made") == 1
    finally:
        docker("rm", "-f", "-v", name, check=False)
