"""Home Assistant's view: a real ``secagg serve`` with ``homeassistant.enabled``, agents'
messages published on the test broker, and a subscriber that reads what Home Assistant reads
(retained discovery configs, availability, per-camera state and snapshot), also when it
subscribes late."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import JPEG, payload, status_payload
from tests.support.processes import running_aggregator, write_aggregator_config


class Reader:
    """A subscriber to ``homeassistant/#`` and ``secagent/ha/#``: the latest payload of each
    topic (retained ones arrive at once)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: dict[str, bytes] = {}
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.seen.__setitem__(m.topic, bytes(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("homeassistant/#", 1), ("secagent/ha/#", 1)]
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def json(self, topic: str) -> dict[str, object] | None:
        raw = self.seen.get(topic)
        return None if raw is None else dict(json.loads(raw))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def reader(broker: Mosquitto) -> Iterator[Reader]:
    r = Reader(broker)
    yield r
    r.close()


def publish(broker: Mosquitto, topic: str, doc: dict[str, object], *, retain: bool = False) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(doc), qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_home_assistant_reads_discovery_state_and_snapshot(
    broker: Mosquitto, tmp_path: Path, reader: Reader
) -> None:
    agent = "ha-host"
    config, api = write_aggregator_config(
        tmp_path,
        broker,
        client_id="secagg-ha",
        cutoff_s=3,
        extra_yaml="homeassistant: {enabled: true, interval_s: 0.2}\n",
    )
    now = datetime.now(UTC)
    with running_aggregator(config, api, tmp_path / "secagg.log"):
        status = status_payload(agent_id=agent, sent_at=now)
        publish(broker, f"secagent/v1/{agent}/status", status, retain=True)
        base = "homeassistant/binary_sensor/secagent_ha_host_yard/threat/config"
        threat = wait_for(lambda: reader.json(base), what="the threat sensor's discovery config")
        assert threat["state_topic"] == f"secagent/ha/{agent}/yard/state"
        assert threat["availability_topic"] == f"secagent/ha/{agent}/availability"
        assert threat["value_template"] == "{{ value_json.threat }}"
        assert (
            threat["payload_on"] == "ON" and threat["unique_id"] == "secagent_ha_host_yard_threat"
        )
        assert threat["device"]["identifiers"] == ["secagent_ha_host"]  # type: ignore[index]
        for entity in (
            "sensor/secagent_ha_host_yard/events",
            "camera/secagent_ha_host_yard/snapshot",
        ):
            assert reader.json(f"homeassistant/{entity}/config"), entity
        assert wait_for(lambda: reader.seen.get(f"secagent/ha/{agent}/availability")) == b"online"
        idle = reader.json(f"secagent/ha/{agent}/yard/state")
        assert idle == {"threat": "OFF", "events": 0, "last_event_threats": 0}

        # a threat: the binary sensor turns on, with the event's fields and its snapshot
        p = payload(agent_id=agent, camera="yard", at_s=0)
        p["frame"]["captured_at"] = now.isoformat()
        publish(broker, f"secagent/v1/{agent}/threats", p)

        def threat_on() -> dict[str, object] | None:
            s = reader.json(f"secagent/ha/{agent}/yard/state")
            return s if s is not None and s["threat"] == "ON" else None

        state = wait_for(threat_on, what="the threat on")
        assert state["events"] == 1 and state["last_event_id"] == 1
        assert state["severity"] == "high" and state["label"] == "person"
        assert state["url"] == f"{api}/events/1"
        assert wait_for(lambda: reader.seen.get(f"secagent/ha/{agent}/yard/snapshot")) == JPEG

        # the agent goes offline (its last will): every entity unavailable; the event ends
        publish(
            broker,
            f"secagent/v1/{agent}/status",
            status_payload(agent_id=agent, state="offline", sent_at=now),
            retain=True,
        )
        wait_for(
            lambda: reader.seen.get(f"secagent/ha/{agent}/availability") == b"offline",
            what="availability offline",
        )
        wait_for(
            lambda: (s := reader.json(f"secagent/ha/{agent}/yard/state")) and s["threat"] == "OFF",
            timeout_s=30,
            what="the threat off once the event ended",
        )

    # Home Assistant started later reads all of it, retained
    late = Reader(broker)
    try:
        wait_for(lambda: late.seen.get(f"secagent/ha/{agent}/yard/snapshot") == JPEG)
        assert late.json(base) == reader.json(base)
        assert late.json(f"secagent/ha/{agent}/yard/state") == reader.json(
            f"secagent/ha/{agent}/yard/state"
        )
    finally:
        late.close()
