"""Never half-alive: a store writer, a notification sender or an outbox publisher thread that
dies is reported (``/api/health`` 503 with the cause, the agent's liveness) and takes its
process down with a non-zero exit, so systemd restarts it, instead of a process that still
answers while it no longer stores, sends or publishes.

The death is a real thread ending on an exception that escapes its loop (``SystemExit`` raised
where the loop calls the store: what an unforeseen bug would do); everything else is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import liveness
from agent.pipeline import AgentDied, build_agent
from aggregator import records
from aggregator.ingest import Ingest
from aggregator.service import Service, ServiceError
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import Harness, ingest_config, threat_payload
from tests.support.processes import write_agent_config

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def _die(*args: object, **kwargs: object) -> None:
    raise SystemExit("an unforeseen bug")


def test_a_dead_store_writer_is_reported_and_ends_the_service(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ingest_config(broker, tmp_path, api={"port": free_port()})
    service = Service(config)
    ingest: Ingest = service.ingest
    monkeypatch.setattr(records, "store_batch", _die)
    h = Harness(ingest, broker, config.store.path)
    try:
        service.ingest.start = lambda: None  # type: ignore[method-assign]  # started below
        Ingest.start(ingest)
        wait_for(ingest.connected.is_set, what="ingest connected")
        h.send(threat_payload())
        wait_for(lambda: ingest.liveness().fatal is not None, what="the writer's death seen")
        with api_client(config, liveness=ingest.liveness) as api:
            health = api.get("/api/health")
        assert health.status_code == 503
        assert any("died of SystemExit" in p for p in health.json()["problems"])
        with pytest.raises(ServiceError, match="store writer died"):
            service.run()  # returns at once with the cause: the process exits non-zero
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()


def test_a_dead_outbox_publisher_ends_the_agent(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cameras = f"  - name: door\n    source: {{type: directory, path: {tmp_path}}}\n"
    agent = build_agent(write_agent_config(tmp_path, broker, agent_id="dying", cameras=cameras))
    monkeypatch.setattr(agent.outbox, "pending", _die)
    with pytest.raises(AgentDied, match="outbox publisher died: SystemExit"):
        agent.run()
    assert agent.link.died is not None and agent.link.died.startswith("SystemExit")


def test_the_agents_liveness_names_a_dead_publisher(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cameras = f"  - name: door\n    source: {{type: directory, path: {tmp_path}}}\n"
    agent = build_agent(write_agent_config(tmp_path, broker, agent_id="dying2", cameras=cameras))
    monkeypatch.setattr(agent.outbox, "pending", _die)
    agent.link.start()
    try:
        wait_for(lambda: not agent.link.publisher_alive(), what="the publisher's death")
        found = liveness.problems(agent, now=0.0, stall_s=1e9)
        assert any("outbox-publisher thread died of SystemExit" in p for p in found)
    finally:
        agent.stop()
        agent.link.stop()
        agent.outbox.close()
