"""Home Assistant and other MQTT consumers: what the store says, on topics they read without
templates (``homeassistant.enabled``). Published by secagg on the ingest's MQTT connection (one
session, one broker account), retained, and only when it changes:

- MQTT discovery, per agent (a device) and camera, under ``homeassistant/``:
  a binary sensor ``threat`` (on while the camera has an open event; the last event's fields as
  attributes), sensors ``events`` (events of the camera so far) and ``last_event_threats``, and
  a camera entity showing the latest event's best snapshot;
- ``secagent/ha/<agent>/availability``: plain ``online`` / ``offline`` (from the agent's status
  and last will), every entity's availability;
- ``secagent/ha/<agent>/<camera>/state``: JSON (threat ON/OFF, last event id, severity, label,
  score, started_at, events, last_event_threats, url of the event page);
- ``secagent/ha/<agent>/<camera>/snapshot``: the latest event's best snapshot, JPEG bytes.

A thread reads the store every ``interval_s`` (a cheap check first: nothing is recomputed while
no event or agent changed) and publishes what differs from what it published last; after a
reconnect it publishes everything again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator import store
from aggregator.config import AggregatorConfig
from aggregator.snapshots import snapshot_path
from aggregator.timestamps import utc

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]
"""Publish retained at QoS 1; False when it could not be queued (not connected)."""


def _object_id(*parts: str) -> str:
    return "_".join(["secagent", *(p.replace(".", "_").replace("-", "_") for p in parts)])


@dataclass(frozen=True)
class Topics:
    discovery_prefix: str
    state_prefix: str

    def availability(self, agent_id: str) -> str:
        return f"{self.state_prefix}/{agent_id}/availability"

    def state(self, agent_id: str, camera: str) -> str:
        return f"{self.state_prefix}/{agent_id}/{camera}/state"

    def snapshot(self, agent_id: str, camera: str) -> str:
        return f"{self.state_prefix}/{agent_id}/{camera}/snapshot"

    def config(self, component: str, agent_id: str, camera: str, entity: str) -> str:
        return f"{self.discovery_prefix}/{component}/{_object_id(agent_id, camera)}/{entity}/config"


def discovery(
    topics: Topics, agent_id: str, camera: str, *, sw_version: str | None
) -> dict[str, dict[str, Any]]:
    """The discovery configs of one camera: topic -> config (Home Assistant's MQTT schema)."""
    device = {
        "identifiers": [_object_id(agent_id)],
        "name": f"secagent {agent_id}",
        "manufacturer": "secagent",
        "model": "edge agent",
        **({"sw_version": sw_version} if sw_version else {}),
    }
    state = topics.state(agent_id, camera)
    common = {
        "availability_topic": topics.availability(agent_id),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    uid = _object_id(agent_id, camera)
    return {
        topics.config("binary_sensor", agent_id, camera, "threat"): {
            **common,
            "name": f"{camera} threat",
            "unique_id": f"{uid}_threat",
            "state_topic": state,
            "value_template": "{{ value_json.threat }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "safety",
            "json_attributes_topic": state,
        },
        topics.config("sensor", agent_id, camera, "events"): {
            **common,
            "name": f"{camera} events",
            "unique_id": f"{uid}_events",
            "state_topic": state,
            "value_template": "{{ value_json.events }}",
            "state_class": "total_increasing",
        },
        topics.config("sensor", agent_id, camera, "last_event_threats"): {
            **common,
            "name": f"{camera} last event threats",
            "unique_id": f"{uid}_last_event_threats",
            "state_topic": state,
            "value_template": "{{ value_json.last_event_threats }}",
        },
        topics.config("camera", agent_id, camera, "snapshot"): {
            **common,
            "name": f"{camera} last threat",
            "unique_id": f"{uid}_snapshot",
            "topic": topics.snapshot(agent_id, camera),
        },
    }


class HomeAssistantBridge:
    """Publishes the store's state for Home Assistant (see the module's docstring)."""

    def __init__(
        self, config: AggregatorConfig, publish: Publish, connected: threading.Event
    ) -> None:
        self.config = config
        settings = config.homeassistant
        self.topics = Topics(settings.discovery_prefix, settings.state_prefix)
        self.interval_s = settings.interval_s
        self.publish = publish
        self.connected = connected
        self._published: dict[str, bytes] = {}
        self._token: object = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="homeassistant", daemon=True)
        self.errors = 0

    def _send(self, topic: str, payload: bytes) -> None:
        if self._published.get(topic) == payload:
            return
        if self.publish(topic, payload):
            self._published[topic] = payload

    def messages(self, conn: store.Connection) -> dict[str, bytes]:
        """Every topic and payload the store's state calls for now."""
        out: dict[str, bytes] = {}
        base_url = self.config.api.base_url()
        cameras: dict[tuple[str, str], None] = {}
        agents = {a.agent_id: a for a in store.agents.list_agents(conn)}
        for row in agents.values():
            for cam in row.cameras:
                cameras[(row.agent_id, str(cam.get("name")))] = None
        stats = store.events.camera_stats(conn)
        for key in stats:
            cameras[key] = None
        for agent_id, row in agents.items():
            out[self.topics.availability(agent_id)] = row.state.encode()
        for agent_id, camera in sorted(cameras):
            agent = agents.get(agent_id)
            version = (agent.versions or {}).get("code") if agent else None
            for topic, doc in discovery(self.topics, agent_id, camera, sw_version=version).items():
                out[topic] = json.dumps(doc, sort_keys=True).encode()
            count, latest = stats.get((agent_id, camera), (0, 0))
            event = store.events.get(conn, latest) if latest else None
            state: dict[str, Any] = {"threat": "OFF", "events": count, "last_event_threats": 0}
            if event is not None:
                state.update(
                    threat="ON" if event.ended_ts is None else "OFF",
                    last_event_id=event.id,
                    severity=event.severity,
                    label=event.label,
                    rule=event.rule,
                    score=round(event.top_score, 4),
                    started_at=utc(event.started_ts).isoformat(),
                    last_seen_at=utc(event.last_seen_ts).isoformat(),
                    last_event_threats=event.threat_count,
                    url=f"{base_url}/events/{event.id}",
                )
                jpeg = self._snapshot(conn, event.top_message_id)
                if jpeg is not None:
                    out[self.topics.snapshot(agent_id, camera)] = jpeg
            out[self.topics.state(agent_id, camera)] = json.dumps(state, sort_keys=True).encode()
        return out

    def _snapshot(self, conn: store.Connection, message_id: str) -> bytes | None:
        sha = store.messages.snapshot_sha256(conn, message_id)
        if sha is None:
            return None
        path: Path = snapshot_path(self.config.store.snapshots_dir, sha)
        try:
            return path.read_bytes()
        except OSError:
            return None

    def turn(self, conn: store.Connection) -> None:
        """One check: publish what changed since the last one."""
        token = store.events.change_token(conn)
        if token == self._token:
            return
        for topic, payload in self.messages(conn).items():
            self._send(topic, payload)
        self._token = token

    def _run(self) -> None:
        conn: store.Connection | None = None
        was_connected = False
        try:
            while not self._stop.wait(self.interval_s):
                if not self.connected.is_set():
                    was_connected = False
                    continue
                if not was_connected:  # a new session: publish everything again
                    self._published.clear()
                    self._token = None
                    was_connected = True
                try:
                    if conn is None:
                        conn = store.connect(self.config.store.target, readonly=True)
                    self.turn(conn)
                except (store.StoreUnavailable, store.DatabaseError) as exc:
                    self.errors += 1
                    log.warning("Home Assistant topics not updated: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
