"""The scale stack (docker/compose.scale.yaml) as an operator runs it: Mosquitto, PostgreSQL, a
mail sink, one ``secagg serve --role api`` and ``--scale ingest=3`` workers, every container
from the images built here. Three agents (``secagent send-test-threats`` in agent containers on
the compose network) send numbered threats whose cameras belong to two sites, so their group
keys collide across agents and workers; one worker container is killed mid-stream. Every threat
is stored once, one event per group key, one email per event; the api's health reports the dead
worker, and all three once it is started again. The snapshots the workers store are served by
the api from the volume they share; a worker whose process dies is started again by Docker;
scaling down stops a worker cleanly.

Run by ``make docker-test`` (not by ``make test``: it needs a Docker engine and minutes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.synthetic import synthetic_threat
from demo.broker import free_port
from docker.tests.support import DOCKER, ROOT, SCALE_COMPOSE_FILE, Compose, docker, inspect
from modelrt.manifest import load_manifest
from modelrt.rules import load_rules
from tests.support import wait_for
from wire.envelope import pack_threat
from wire.payloads import Versions
from wire.topics import Topics

AGENTS = ("gate-a", "gate-b", "gate-c")
PER_AGENT = 300
RATE_HZ = 40  # per agent: the stream lasts about 7 s, long enough to kill a worker inside it
WORKERS = 3
SITES = {"test-0": "north", "test-1": "north", "test-2": "south"}
PROJECT = "secagent-scaletest"
CONFIG = "/etc/secagent/secagg.yaml"


class ScaleStack:
    def __init__(self, compose: Compose, api: str, work: Path) -> None:
        self.compose, self.api, self.work = compose, api, work
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """A viewer token, made in the api container as an operator would."""
        if self._headers is None:
            out = self.compose.exec(
                "api", "secagg", "token", "create", "--name", "scale-test", "--role", "viewer",
                "--config", CONFIG,
            )  # fmt: skip
            self._headers = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
        return self._headers

    def health(self) -> dict[str, Any]:
        """``/api/health`` of the api process (200 or 503: the body says why); {} while it
        does not answer."""
        try:
            found: dict[str, Any] = httpx.get(f"{self.api}/api/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return found

    def stored(self) -> int:
        return int(self.health().get("messages", -1))

    def sql(self, query: str) -> list[str]:
        """Rows of a query on the store, read as the database's superuser in its container."""
        out = self.compose.exec("postgres", "psql", "-qAt", "-d", "secagg", "-c", query)
        return out.splitlines()

    def mails(self) -> list[str]:
        return self.compose.mails()

    def workers(self) -> list[str]:
        """The worker names: the hostnames of the ingest containers."""
        return sorted(
            inspect(self.compose.container("ingest", i), "{{.Config.Hostname}}")
            for i in range(1, WORKERS + 1)
        )

    def healthy(self) -> bool:
        containers = [self.compose.container(s) for s in ("mosquitto", "mailsink", "postgres")]
        containers += [self.compose.container("api")]
        containers += [self.compose.container("ingest", i) for i in range(1, WORKERS + 1)]
        return all(inspect(c, "{{.State.Health.Status}}") == "healthy" for c in containers)

    def start_agent(self, agent_id: str) -> subprocess.Popen[str]:
        """``secagent send-test-threats`` in an agent container on the compose network."""
        config = self.work / f"{agent_id}.yaml"
        config.write_text(
            f"agent_id: {agent_id}\n"
            "mqtt: {host: mosquitto, port: 1883, status_interval_s: 2, receipt_timeout_s: 5}\n"
            "outbox: {path: /var/lib/secagent/outbox.sqlite}\n"
            "detect: {model: /opt/secagent/current/models/fall-detection-yolov8.yaml}\n"
            "rules: /opt/secagent/current/rules/default.yaml\n"
            "cameras:\n"
            "  - name: unused\n"
            "    source: {type: directory, path: /var/lib/secagent}\n"
        )
        config.chmod(0o644)
        return subprocess.Popen(
            [
                DOCKER, "run", "--rm", "--name", f"{PROJECT}-{agent_id}",
                "--network", self.compose.network,
                "-v", f"{config}:/etc/secagent/secagent.yaml:ro",
                "secagent/agent:local", "send-test-threats",
                "--config", "/etc/secagent/secagent.yaml",
                "--count", str(PER_AGENT), "--cameras", "3", "--rate", str(RATE_HZ),
                "--drain-timeout", "150", "--log-level", "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"send-test-threats exited {proc.returncode}:\n{err[-3000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])["summary"]
    return summary


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleStack]:
    for image in ("agent", "aggregator", "mosquitto", "mailsink", "postgres"):
        if not docker("images", "-q", f"secagent/{image}:local").strip():
            pytest.fail(
                f"secagent/{image}:local is not built: run docker/build.sh (make docker-test)"
            )
    work = tmp_path_factory.mktemp("scale")
    work.chmod(0o755)
    # the shipped config, with the test's sites (the three cameras of every agent in two
    # sites: group keys collide across agents) and a cutoff longer than the test
    config: dict[str, Any] = yaml.safe_load((ROOT / "docker/config/secagg-scale.yaml").read_text())
    config["events"] = {"cutoff_s": 300, "sites": SITES}
    (work / "secagg.yaml").write_text(yaml.safe_dump(config))
    (work / "secagg.yaml").chmod(0o644)
    port = free_port()
    compose = Compose(
        PROJECT,
        {
            "SECAGG_DB_PASSWORD": secrets.token_urlsafe(16),
            "SECAGG_PORT": str(port),
            "SECAGG_MQTT_PORT": str(free_port()),
            "SECAGG_SCALE_CONFIG": str(work / "secagg.yaml"),
        },
        file=SCALE_COMPOSE_FILE,
    )
    compose("down", "-v", "--remove-orphans", check=False)
    s = ScaleStack(compose, f"http://127.0.0.1:{port}", work)
    try:
        compose("up", "-d", "--scale", f"ingest={WORKERS}")
        wait_for(s.healthy, timeout_s=180, what="every container healthy")
        yield s
    finally:
        for agent in AGENTS:
            docker("rm", "-f", f"{PROJECT}-{agent}", check=False)
        compose("down", "-v", "--remove-orphans", check=False)


def test_threats_of_three_agents_stored_once_with_a_worker_killed(stack: ScaleStack) -> None:
    compose = stack.compose
    names = stack.workers()
    health = wait_for(
        lambda: (h := stack.health()).get("status") == "ok" and len(h["workers"]) == WORKERS and h,
        timeout_s=60,
        what="the api's health with every worker",
    )
    assert sorted(w["name"] for w in health["workers"]) == names
    assert stack.headers  # the token now: docker-compose exec is slow mid-stream
    agents = [stack.start_agent(agent) for agent in AGENTS]
    total = len(AGENTS) * PER_AGENT
    wait_for(lambda: stack.stored() >= total // 4, timeout_s=120, what="a quarter stored")
    victim = compose.container("ingest", 2)
    docker("kill", victim)  # mid-stream: what it held unacknowledged, the agents send again
    killed_at, stored_at_kill = time.monotonic(), stack.stored()
    assert stored_at_kill < total, "the stream ended before the kill: not mid-stream"
    summaries = [finish(agent) for agent in agents]
    drained_s = time.monotonic() - killed_at
    assert all(s["outbox_depth"] == 0 for s in summaries), summaries  # all receipted

    # every threat once
    rows = stack.sql("SELECT agent_id || ' ' || frame_id FROM messages")
    assert len(rows) == total and len(set(rows)) == total
    assert set(rows) == {f"{a} test-{n:08d}" for a in AGENTS for n in range(PER_AGENT)}
    # one event per group key (a site and the rule), though three workers stored its threats
    events: list[dict[str, Any]] = httpx.get(
        f"{stack.api}/api/events", headers=stack.headers, timeout=10
    ).json()
    assert sorted(sorted(e["cameras"]) for e in events) == [["test-0", "test-1"], ["test-2"]]
    assert sum(e["threat_count"] for e in events) == total
    keys = stack.sql("SELECT group_key FROM events ORDER BY group_key")
    assert keys == ["site=north|rule=person_on_premises", "site=south|rule=person_on_premises"]
    # one notification per event, sent once by one of the four senders, one email each
    wait_for(
        lambda: stack.sql("SELECT state FROM notifications") == ["sent"] * len(events),
        timeout_s=60,
        what="a notification per event, sent",
    )
    assert len(stack.mails()) == len(events), stack.mails()

    # the killed worker is reported by the api's health, then back once started again
    killed = inspect(victim, "{{.Config.Hostname}}")
    degraded = wait_for(
        lambda: (h := stack.health()).get("status") == "degraded" and h,
        timeout_s=60,
        what="the api's health to report the killed worker",
    )
    assert any(f"ingest worker {killed} " in p for p in degraded["problems"]), degraded
    docker("start", victim)  # `docker kill` is a stop to the restart policy: start it again
    health = wait_for(
        lambda: (h := stack.health()).get("status") == "ok" and h,
        timeout_s=90,
        what="the api's health ok with the worker back",
    )
    assert sorted(w["name"] for w in health["workers"]) == names
    assert all(w["broker_connected"] and not w["problems"] for w in health["workers"])
    assert health["messages"] == health["counters"]["stored"] == total
    assert health["events"] == len(events)
    print(  # the figures of this run (pytest -s)
        f"scale: {stored_at_kill}/{total} stored when the worker was killed; the agents' "
        f"outboxes drained {drained_s:.1f} s after; duplicates refused: "
        f"{health['counters'].get('duplicate', 0)}"
    )
    wait_for(stack.healthy, timeout_s=90, what="every container healthy again")
    assert len(stack.mails()) == len(events)


def test_the_snapshots_workers_store_are_served_by_the_api(stack: ScaleStack) -> None:
    """The workers write snapshots into the volume they share with the api, which serves
    them: threats with a snapshot each, published to the broker's published port, spread by
    the shared subscription over the workers."""
    rules = load_rules(ROOT / "rules" / "default.yaml")
    versions = Versions(
        code="scale-test",
        model_sha256=load_manifest(ROOT / "models" / "fall-detection-yolov8.yaml").sha256,
        rules_sha256=rules.sha256,
        config_sha256="c3" * 32,
    )
    rng = np.random.default_rng(13)
    jpegs = [
        cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(12)
    ]
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", int(stack.compose.env["SECAGG_MQTT_PORT"]))
    client.loop_start()
    try:
        ids = []
        for serial, jpeg in enumerate(jpegs):
            msg = synthetic_threat(
                agent_id="gate-snap",
                camera="yard",
                serial=serial,
                versions=versions,
                snapshot=jpeg,
                rule=(rules.rules[0].name, rules.rules[0].severity),
            )
            info = client.publish(Topics("gate-snap").threats, pack_threat(msg, jpeg), qos=1)
            info.wait_for_publish(10)
            ids.append(msg.message_id)
    finally:
        client.loop_stop()
        client.disconnect()

    def served(sha256: str) -> bytes | None:
        r = httpx.get(f"{stack.api}/api/snapshots/{sha256}.jpg", headers=stack.headers, timeout=5)
        return r.content if r.status_code == 200 else None

    for jpeg in jpegs:
        sha256 = hashlib.sha256(jpeg).hexdigest()
        got = wait_for(
            functools.partial(served, sha256),
            timeout_s=60,
            what="the api serving a snapshot a worker stored",
        )
        assert got == jpeg
    # stored by more than one worker (each logs the messages it stored)
    storers = [
        i for i in range(1, WORKERS + 1) if any(m in stack.compose.logs("ingest", i) for m in ids)
    ]
    assert len(storers) > 1, storers


def test_a_worker_whose_process_dies_is_started_again_by_docker(stack: ScaleStack) -> None:
    """The restart policy: secagg SIGKILLed inside its container (a crash, not `docker kill`)
    ends the container, and Docker starts it again, under the same name."""
    container = stack.compose.container("ingest", 1)
    name = inspect(container, "{{.Config.Hostname}}")
    pid = next(w["pid"] for w in stack.health()["workers"] if w["name"] == name)
    before = int(inspect(container, "{{.RestartCount}}"))
    started = f"SELECT started_ts FROM ingest_workers WHERE name = '{name}'"
    first = stack.sql(started)
    kill = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGKILL)"
    docker("exec", container, "python3", "-c", kill, str(pid))
    wait_for(
        lambda: int(inspect(container, "{{.RestartCount}}")) > before,
        timeout_s=60,
        what="Docker to start the worker's container again",
    )
    # its new process beats under the same name (a new start time in its row)
    wait_for(lambda: stack.sql(started) not in ([], first), timeout_s=60, what="the new heartbeat")
    health = wait_for(
        lambda: (h := stack.health()).get("status") == "ok" and h,
        timeout_s=60,
        what="health ok with the worker connected again",
    )
    assert name in [w["name"] for w in health["workers"]]
    wait_for(stack.healthy, timeout_s=90, what="every container healthy again")


def test_scaling_down_stops_a_worker_cleanly(stack: ScaleStack) -> None:
    compose = stack.compose
    names = stack.workers()
    last = compose.container("ingest", WORKERS)
    gone = inspect(last, "{{.Config.Hostname}}")
    docker("stop", "-t", "30", last, timeout_s=60)  # SIGTERM, as `--scale` down sends it
    assert inspect(last, "{{.State.ExitCode}}") == "0", docker("logs", last)[-2000:]
    # stopped, not dead: it left the store's list of workers, health stays ok
    health = stack.health()
    assert health["status"] == "ok", health
    assert sorted(w["name"] for w in health["workers"]) == sorted(set(names) - {gone})
    compose("up", "-d", "--scale", f"ingest={WORKERS - 1}", timeout_s=120)
    assert docker("ps", "-aq", "--filter", f"name=^{last}$").strip() == ""  # removed
