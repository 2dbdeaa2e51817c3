"""Threat payloads as an agent sends them, an in-process ingest on the test broker, and what
the ingest writer does with a message, without a broker."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aggregator import events, records, store
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for
from wire.payloads import ThreatMessageV1, parse_payload

SHA = "ab" * 32
T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def threat_payload(
    *,
    agent_id: str = "cam-host",
    camera: str = "yard",
    at_s: float = 0.0,
    message_id: str | None = None,
    severity: str = "high",
    score: float = 0.8,
    frame_sha256: str | None = None,
) -> dict[str, Any]:
    """A valid secagent.threat/1 payload as an agent would send it: a still of its own (its
    sha256 from its frame id) unless ``frame_sha256`` names one."""
    box = {"label": "person", "class_id": 0, "score": score, "xyxy": [10.0, 20.0, 110.0, 220.0]}
    frame_id = uuid.uuid4().hex
    return {
        "schema": "secagent.threat/1",
        "message_id": message_id or uuid.uuid4().hex,
        "agent_id": agent_id,
        "camera": camera,
        "lineage_id": uuid.uuid4().hex,
        "frame": {
            "frame_id": frame_id,
            "sha256": frame_sha256 or hashlib.sha256(frame_id.encode()).hexdigest(),
            "kind": "file",
            "source": f"/incoming/{frame_id}.jpg",
            "captured_at": (T0 + timedelta(seconds=at_s)).isoformat(),
            "width": 1280,
            "height": 720,
        },
        "detections": [box],
        "threats": [{**box, "rule": "person_on_premises", "severity": severity}],
        "versions": {
            "code": "test",
            "model_sha256": SHA,
            "rules_sha256": SHA,
            "config_sha256": SHA,
        },
        "sent_at": T0.isoformat(),
    }


class Harness:
    def __init__(self, ingest: Ingest, broker: Mosquitto, db_path: store.schema.Target) -> None:
        self.ingest = ingest
        self.db_path = db_path
        self.pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.pub.connect(broker.host, broker.port)
        self.pub.loop_start()

    def send(
        self, payload: bytes | dict[str, Any], *, topic: str = "secagent/v1/cam-host/threats"
    ) -> None:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.pub.publish(topic, raw, qos=1).wait_for_publish(10)

    def rows(self, sql: str) -> list[sqlite3.Row]:
        conn = store.connect(self.db_path, readonly=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@contextmanager
def running_ingest(config: AggregatorConfig, broker: Mosquitto) -> Iterator[Harness]:
    """The aggregator's ingest of ``config``, started and connected, with a publisher on
    ``broker``; stopped at the end."""
    ingest = Ingest(config)
    ingest.start()
    wait_for(ingest.connected.is_set, what="ingest connected")
    h = Harness(ingest, broker, config.store.target)
    try:
        yield h
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()


def ingest_config(broker: Mosquitto, work: Path, **sections: dict[str, Any]) -> AggregatorConfig:
    """An in-process aggregator config: a fresh session on ``broker``, a store under ``work``,
    events with a 10 s cutoff; ``sections`` are merged over that (e.g. ``notify={...}``)."""
    doc: dict[str, Any] = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"secagg-{uuid.uuid4().hex[:8]}",
            "session_expiry_s": 0,
        },
        "store": {"path": str(work / "secagg.sqlite"), "snapshots_dir": str(work / "snapshots")},
        "events": {"cutoff_s": 10},
    }
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return AggregatorConfig.model_validate(doc)


def subscribe_json(broker: Mosquitto, topic: str) -> tuple[mqtt.Client, list[dict[str, Any]]]:
    """A subscriber on ``topic`` that decodes each message as JSON; returned once subscribed."""
    seen: list[dict[str, Any]] = []
    subscribed: list[int] = []
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: seen.append(json.loads(m.payload))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.append(mid)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    wait_for(lambda: subscribed, what=f"subscribed to {topic}")
    return sub, seen


JPEG = cv2.imencode(".jpg", sample_still("person"), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
JPEG_SHA = hashlib.sha256(JPEG).hexdigest()
MODEL_SHA, RULES_SHA, CONFIG_SHA = "a1" * 32, "b2" * 32, "c3" * 32


def payload(
    *, at_s: float = 0.0, camera: str = "yard", agent_id: str = "cam-host"
) -> dict[str, Any]:
    """A threat payload with a JPEG snapshot: a frame of a video at 2 fps (its position from
    ``at_s``) whose pixels are all the same (sha256 JPEG_SHA), as a still scene gives."""
    p = threat_payload(at_s=at_s, camera=camera, agent_id=agent_id)
    p["versions"] = {
        "code": "0.1.0+gtest",
        "model_sha256": MODEL_SHA,
        "rules_sha256": RULES_SHA,
        "config_sha256": CONFIG_SHA,
    }
    p["frame"].update(
        sha256=JPEG_SHA, kind="video", source=f"/clips/{camera}.avi#{round(at_s * 2)}"
    )
    p["snapshot_jpeg_b64"] = base64.b64encode(JPEG).decode()
    return p


def status_payload(
    *, agent_id: str = "cam-host", state: str = "online", sent_at: datetime | None = None
) -> dict[str, Any]:
    """A valid secagent.status/1 payload with one running camera."""
    return {
        "schema": "secagent.status/1",
        "agent_id": agent_id,
        "state": state,
        "versions": {
            "code": "0.1.0+gtest",
            "model_sha256": MODEL_SHA,
            "rules_sha256": RULES_SHA,
            "config_sha256": CONFIG_SHA,
        },
        "provider": "CPUExecutionProvider",
        "outbox_depth": 2,
        "outbox_dropped": 0,
        "cameras": [{"name": "yard", "state": "running", "counters": {"captured": 7}}],
        "sent_at": (sent_at or T0).isoformat(),
    }


def store_payloads(
    config: AggregatorConfig,
    payloads: list[dict[str, Any]],
    *,
    target: store.schema.Target | None = None,
) -> records.BatchResult:
    """What the ingest writer does with a batch of messages (threats or statuses, by their
    schema), in its one transaction: the real code path, without a broker. ``target``: the
    store to write (a SQLite file or a PostgreSQL URL; default: the config's SQLite file)."""
    where = config.store.path if target is None else target
    store.migrate(where)
    conn = store.connect(where)
    try:
        return store_on(conn, config, payloads, now_ts=time.time())
    finally:
        conn.close()


def store_on(
    conn: store.Connection,
    config: AggregatorConfig,
    payloads: list[dict[str, Any]],
    *,
    now_ts: float,
) -> records.BatchResult:
    """:func:`store_payloads` on an open connection, at ``now_ts`` (the aggregator's clock)."""
    kinds = {"secagent.status/1": "status"}
    return records.store_batch(
        conn,
        [
            (
                f"secagent/v1/{p['agent_id']}/{kinds.get(p['schema'], 'threats')}",
                json.dumps(p).encode(),
            )
            for p in payloads
        ],
        config=config,
        grouping=events.Grouping.from_config(config.events),
        now_ts=now_ts,
    )


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> AggregatorConfig:
    """An aggregator config with its store under ``tmp_path`` and events with a 10 s cutoff;
    ``sections`` are merged over that (e.g. ``notify={...}``)."""
    doc: dict[str, Any] = {
        "store": {
            "path": str(tmp_path / "secagg.sqlite"),
            "snapshots_dir": str(tmp_path / "snapshots"),
            "plots_dir": str(tmp_path / "plots"),
        },
        "events": {"cutoff_s": 10},
    }
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return AggregatorConfig.model_validate(doc)


def read(config: AggregatorConfig) -> sqlite3.Connection:
    return store.connect(config.store.path, readonly=True)


def released_row(
    payload: dict[str, Any], *, received_at: str, snapshot_sha256: str | None
) -> dict[str, Any]:
    """The ``messages`` row of a ``secagent.threat/1`` payload as the code of the first
    release stored it (the columns of migration m001)."""
    msg = parse_payload(json.dumps(payload).encode(), ThreatMessageV1)
    return {
        "message_id": msg.message_id,
        "agent_id": msg.agent_id,
        "camera": msg.camera,
        "lineage_id": msg.lineage_id,
        "frame_id": msg.frame.frame_id,
        "frame_sha256": msg.frame.sha256,
        "frame_kind": msg.frame.kind,
        "frame_source": msg.frame.source,
        "frame_width": msg.frame.width,
        "frame_height": msg.frame.height,
        "captured_at": msg.frame.captured_at.isoformat(),
        "captured_ts": msg.frame.captured_at.timestamp(),
        "received_at": received_at,
        "code_version": msg.versions.code,
        "model_sha256": msg.versions.model_sha256,
        "rules_sha256": msg.versions.rules_sha256,
        "config_sha256": msg.versions.config_sha256,
        "snapshot_sha256": snapshot_sha256,
        "detections_json": json.dumps([d.model_dump(mode="json") for d in msg.detections]),
    }
