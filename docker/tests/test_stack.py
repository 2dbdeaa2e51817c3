"""The compose stack (docker/compose.yaml) as an operator runs it: the images built here from
the mmdebstrap base (docker/build.sh), Mosquitto, the aggregator, a mail sink and one agent on
the sample clip. A threat event is stored and emailed; restarting each container mid-stream
loses nothing; health checks turn unhealthy when the broker is gone or the agent is stuck, and
healthy again; SIGTERM ends the daemons with exit 0.

Run by ``make docker-test`` (not by ``make test``: it needs a Docker engine and minutes).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import httpx
import pytest

from demo.broker import free_port
from demo.footage import sample_clip
from docker.tests.support import ROOT, Compose, docker, inspect
from tests.support import wait_for

SERVICES = ("mosquitto", "mailsink", "secagg", "secagent")
AGENT = "compose-host"


class Stack:
    def __init__(self, compose: Compose, api: str) -> None:
        self.compose, self.api = compose, api
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """A viewer token, made in the aggregator's container as an operator would."""
        if self._headers is None:
            token = (
                self.compose.exec(
                    "secagg",
                    "secagg",
                    "token",
                    "create",
                    "--name",
                    "docker-test",
                    "--role",
                    "viewer",
                    "--config",
                    "/etc/secagent/secagg.yaml",
                )
                .strip()
                .splitlines()[-1]
            )
            self._headers = {"Authorization": f"Bearer {token}"}
        return self._headers

    def get(self, path: str) -> object:
        return httpx.get(f"{self.api}{path}", headers=self.headers, timeout=10).json()

    def stored(self) -> int:
        try:
            agent = httpx.get(f"{self.api}/api/agents/{AGENT}", headers=self.headers, timeout=5)
            health = httpx.get(f"{self.api}/api/health", timeout=5).json()
        except httpx.HTTPError:
            return -1
        return int(health["messages"]) if agent.status_code == 200 else 0

    def duplicates(self) -> int:
        """Messages the aggregator received again and did not store (the same frame)."""
        health = httpx.get(f"{self.api}/api/health", timeout=5).json()
        return int(health["counters"].get("duplicate", 0))

    def mails(self) -> list[str]:
        return self.compose.mails()

    def healthy(self, *services: str) -> bool:
        return all(self.compose.health(s) == "healthy" for s in services)

    def unhealthy(self, *services: str) -> bool:
        return all(self.compose.health(s) == "unhealthy" for s in services)

    def agent_summaries(self) -> list[dict[str, int]]:
        """The summary line of each run of the agent container (printed when it stops)."""
        out = []
        for line in self.compose.logs("secagent").splitlines():
            line = re.sub(r"^\S+\s+\|\s+", "", line)
            if line.startswith('{"summary"'):
                out.append(json.loads(line)["summary"])
        return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for image in ("agent", "aggregator", "mosquitto", "mailsink"):
        if not docker("images", "-q", f"secagent/{image}:local").strip():
            pytest.fail(
                f"secagent/{image}:local is not built: run docker/build.sh (make docker-test)"
            )
    footage = tmp_path_factory.mktemp("footage")
    shutil.copy(sample_clip(ROOT / "var" / "cache"), footage / "sample.avi")
    footage.chmod(0o755)
    port = free_port()
    compose = Compose(
        "secagent-stacktest", {"SECAGENT_FOOTAGE": str(footage), "SECAGG_PORT": str(port)}
    )
    compose("down", "-v", "--remove-orphans", check=False)
    compose("up", "-d")
    s = Stack(compose, f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: s.healthy(*SERVICES), timeout_s=180, what="every service healthy")
        yield s
    finally:
        compose("down", "-v", "--remove-orphans", check=False)


def test_a_threat_event_is_stored_and_its_email_sent(stack: Stack) -> None:
    wait_for(lambda: stack.get("/api/events"), timeout_s=120, what="a threat event")
    event = stack.get("/api/events")[0]  # type: ignore[index]
    assert event["agent_id"] == AGENT and event["rule"] == "person_on_premises"
    mails = wait_for(stack.mails, timeout_s=60, what="an email in the mail sink")
    assert any("HIGH person_on_premises on yard" in subject for subject in mails), mails


def test_restarting_each_container_mid_stream_loses_nothing(stack: Stack) -> None:
    compose = stack.compose
    before = stack.stored()
    assert before > 0
    compose("restart", "-t", "30", "secagg", timeout_s=120)
    assert "stopped cleanly" in compose.logs("secagg")
    wait_for(lambda: stack.stored() >= before, timeout_s=60, what="the store back after restart")
    compose("restart", "-t", "30", "mosquitto", timeout_s=120)
    wait_for(lambda: stack.healthy("mosquitto", "secagg"), timeout_s=120, what="broker back")
    compose("restart", "-t", "30", "secagent", timeout_s=120)  # mid-clip: it starts the clip again
    assert len(stack.agent_summaries()) == 1
    # the second run plays the whole clip; then everything it made is receipted
    wait_for(
        lambda: (
            stack.compose.agent_health().get("cameras") == {"yard": "finished"}
            and stack.compose.agent_health().get("outbox_depth") == 0
        ),
        timeout_s=240,
        what="the clip played and the outbox drained",
    )
    compose("stop", "-t", "30", "secagent", timeout_s=120)
    assert inspect(compose.container("secagent"), "{{.State.ExitCode}}") == "0"
    runs = stack.agent_summaries()
    made = sum(run["threat_messages"] for run in runs)
    # The restarted agent played the clip from its start: the frames the first run had sent came
    # again (same pixels at the same position in the video) and are stored once, counted as
    # duplicates. Each run keeps up with the clip's real time by dropping the frames it has no
    # time for, and which ones depends on the machine's load: the first run may have sent a
    # frame the second dropped. So the store holds at least what the second run made and at
    # most what both made; every message made is stored or counted as a duplicate (the outbox
    # drained above: each was receipted, which the aggregator does only once it is stored).
    stored = stack.stored()
    assert runs[-1]["threat_messages"] <= stored <= made, runs
    assert stack.duplicates() >= made - stored, runs  # + redeliveries of a restart
    # each event got its email, once
    events = stack.get("/api/events")
    wait_for(lambda: len(stack.mails()) >= len(events), timeout_s=60, what="an email per event")  # type: ignore[arg-type]
    assert len(stack.mails()) == len(events)  # type: ignore[arg-type]
    compose("start", "secagent")
    wait_for(lambda: stack.healthy("secagent"), timeout_s=180, what="the agent healthy again")


def test_health_checks_turn_unhealthy_and_back(stack: Stack) -> None:
    compose = stack.compose
    compose("stop", "-t", "30", "mosquitto", timeout_s=120)
    wait_for(
        lambda: stack.unhealthy("secagg", "secagent"),
        timeout_s=90,
        what="unhealthy without a broker",
    )
    compose("start", "mosquitto")
    wait_for(lambda: stack.healthy(*SERVICES), timeout_s=120, what="healthy with the broker back")
    # a stuck agent: its process stopped (SIGSTOP) stops its health file
    pid = json.loads(compose.exec("secagent", "cat", "/run/secagent/health.json"))["pid"]
    signal_agent = "import os, signal, sys; os.kill(int(sys.argv[1]), getattr(signal, sys.argv[2]))"
    compose.exec("secagent", "python3", "-c", signal_agent, str(pid), "SIGSTOP")
    wait_for(lambda: stack.unhealthy("secagent"), timeout_s=90, what="a stuck agent unhealthy")
    compose.exec("secagent", "python3", "-c", signal_agent, str(pid), "SIGCONT")
    wait_for(lambda: stack.healthy("secagent"), timeout_s=90, what="the agent healthy again")


def test_sigterm_ends_the_daemons_with_exit_0(stack: Stack) -> None:
    compose = stack.compose
    compose("stop", "-t", "30", "secagent", "secagg", timeout_s=120)
    for service in ("secagent", "secagg"):
        assert inspect(compose.container(service), "{{.State.ExitCode}}") == "0", compose.logs(
            service
        )[-2000:]
