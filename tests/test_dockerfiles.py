"""The Dockerfiles and the compose file, read as text: what `make docker-test` builds and runs
is tested there; this also covers the images that cannot be built here (Jetson) and runs in
`make test`. Every image: a base from docker/base.sh (or a named JetPack base), Python packages
pinned by constraints.txt, a non-root user, a health check, a volume for its state, tini or
--init as PID 1. The compose stacks (docker/compose.yaml, docker/compose.scale.yaml): images
built here, a named volume for each state folder."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
STATE = {
    "agent": "/var/lib/secagent",
    "agent-gpu": "/var/lib/secagent",
    "jetson": "/var/lib/secagent",
    "aggregator": "/var/lib/secagg",
    "mosquitto": "/var/lib/mosquitto",
    "mailsink": "/var/mail/sink",
    "postgres": "/var/lib/postgresql",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ),
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_image_is_checked() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == set(STATE)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(path: Path) -> None:
    steps = instructions(path)
    image = path.name.removesuffix(".Dockerfile")
    froms = [args for word, args in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "${BASE}" for f in froms), "FROM ${BASE} only"
    base_args = [args for word, args in steps if word == "ARG" and args.startswith("BASE")]
    if image == "jetson":
        assert base_args == ["BASE"]  # no default: the JetPack image is named at build time
    else:
        assert base_args == ["BASE=secagent/debian:bookworm"]  # docker/base.sh, no registry
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a user"
    assert any(w == "HEALTHCHECK" and "CMD" in a for w, a in final)
    volumes = [a for w, a in final if w == "VOLUME"]
    assert volumes and STATE[image] in volumes[0]
    entry = " ".join(a for w, a in final if w == "ENTRYPOINT")
    assert "tini" in entry or image == "jetson"
    for word, args in steps:
        if word == "RUN" and "pip install" in args:
            for command in re.findall(r"pip install[^;&]*", args):
                assert "--no-cache-dir" in command
                assert "-c /src/constraints.txt" in command or "--no-deps" in command, command


def test_compose_runs_the_images_built_here_with_volumes() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "mailsink", "secagg", "secagent"}
    images = {
        "mosquitto": "mosquitto",
        "mailsink": "mailsink",
        "secagg": "aggregator",
        "secagent": "agent",
    }
    for name, service in services.items():
        assert service["image"] == f"secagent/{images[name]}:${{SECAGENT_TAG:-local}}"
        assert "build" not in service  # compose 1.29 cannot pass the build secret
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        state = STATE[images[name]]
        assert mounts[state] in compose["volumes"], f"{name}: {state} on a named volume"
    for name in ("secagg", "secagent"):
        assert services[name]["stop_grace_period"] == "30s"


def test_the_scale_compose_runs_one_api_and_workers_on_postgresql() -> None:
    compose = yaml.safe_load((DOCKER / "compose.scale.yaml").read_text())
    assert "version" not in compose  # the compose-spec format (docker-compose >= 1.27)
    services = compose["services"]
    images = {
        "mosquitto": "mosquitto",
        "mailsink": "mailsink",
        "postgres": "postgres",
        "api": "aggregator",
        "ingest": "aggregator",
    }
    assert set(services) == set(images)
    for name, service in services.items():
        assert service["image"] == f"secagent/{images[name]}:${{SECAGENT_TAG:-local}}"
        assert "build" not in service and service["restart"] == "unless-stopped"
        mounts = {
            v.split(":")[-2] if v.endswith(":ro") else v.split(":")[-1]: v
            for v in service["volumes"]
        }
        state = STATE[images[name]]
        assert mounts[state].split(":")[0] in compose["volumes"], f"{name}: {state} on a volume"
    for name in ("postgres", "api", "ingest"):
        assert services[name]["stop_grace_period"] == "30s"
    # the snapshots folder is one volume for the api and every worker
    assert services["api"]["volumes"][1] == services["ingest"]["volumes"][1]
    assert services["api"]["volumes"][1].startswith("secagg-data:")
    # roles; a replica's worker name is its hostname (unique per container); no fixed name
    assert services["api"]["command"][services["api"]["command"].index("--role") + 1] == "api"
    worker = services["ingest"]["entrypoint"][-1]
    assert '--role ingest --worker "$$HOSTNAME"' in worker and worker.startswith("exec ")
    assert "container_name" not in services["ingest"] and "ports" not in services["ingest"]
    assert services["ingest"]["healthcheck"]["test"][0] == "CMD"
    config = yaml.safe_load((DOCKER / "config" / "secagg-scale.yaml").read_text())
    url = urlsplit(config["store"]["url"])
    assert url.scheme == "postgresql" and url.hostname == "postgres"
    assert url.password is None  # libpq takes it from PGPASSWORD (SECAGG_DB_PASSWORD)


def test_the_build_context_holds_only_what_the_images_need() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*" and all(line.startswith("!") for line in lines[1:])
