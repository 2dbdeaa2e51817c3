"""Threat payloads as an agent sends them, an in-process ingest on the test broker, and what
the ingest writer does with a message, without a broker."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aggregator import events, records, store
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for

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
) -> dict:
    """A valid secagent.threat/1 payload as an agent would send it."""
    box = {"label": "person", "class_id": 0, "score": score, "xyxy": [10.0, 20.0, 110.0, 220.0]}
    return {
        "schema": "secagent.threat/1",
        "message_id": message_id or uuid.uuid4().hex,
        "agent_id": agent_id,
        "camera": camera,
        "lineage_id": uuid.uuid4().hex,
        "frame": {
            "frame_id": uuid.uuid4().hex,
            "sha256": SHA,
            "kind": "file",
            "source": "/incoming/x.jpg",
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
    def __init__(self, ingest: Ingest, broker: Mosquitto, db_path: Path) -> None:
        self.ingest = ingest
        self.db_path = db_path
        self.pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.pub.connect(broker.host, broker.port)
        self.pub.loop_start()

    def send(self, payload: bytes | dict, *, topic: str = "secagent/v1/cam-host/threats") -> None:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.pub.publish(topic, raw, qos=1).wait_for_publish(10)

    def rows(self, sql: str) -> list[sqlite3.Row]:
        conn = store.connect(self.db_path, readonly=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def ingest_config(broker: Mosquitto, work: Path, **sections: dict) -> AggregatorConfig:
    """An in-process aggregator config: a fresh session on ``broker``, a store under ``work``,
    events with a 10 s cutoff; ``sections`` are merged over that (e.g. ``notify={...}``)."""
    doc: dict = {
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


def subscribe_json(broker: Mosquitto, topic: str) -> tuple[mqtt.Client, list[dict]]:
    """A subscriber on ``topic`` that decodes each message as JSON; returned once subscribed."""
    seen: list[dict] = []
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


def payload(*, at_s: float = 0.0, camera: str = "yard") -> dict:
    p = threat_payload(at_s=at_s, camera=camera)
    p["versions"] = {
        "code": "0.1.0+gtest",
        "model_sha256": MODEL_SHA,
        "rules_sha256": RULES_SHA,
        "config_sha256": CONFIG_SHA,
    }
    p["frame"]["sha256"] = JPEG_SHA
    p["snapshot_jpeg_b64"] = base64.b64encode(JPEG).decode()
    return p


def store_payloads(config: AggregatorConfig, payloads: list[dict]) -> None:
    """What the ingest writer does with each message, in one transaction (no broker needed)."""
    store.migrate(config.store.path)
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            for p in payloads:
                records.record_threat(
                    conn,
                    f"secagent/v1/{p['agent_id']}/threats",
                    json.dumps(p).encode(),
                    snapshots_dir=config.store.snapshots_dir,
                    grouping=events.Grouping.from_config(config.events),
                )
    finally:
        conn.close()


def make_config(tmp_path: Path) -> AggregatorConfig:
    return AggregatorConfig.model_validate(
        {
            "store": {
                "path": str(tmp_path / "secagg.sqlite"),
                "snapshots_dir": str(tmp_path / "snapshots"),
                "plots_dir": str(tmp_path / "plots"),
            },
            "events": {"cutoff_s": 10},
        }
    )


def read(config: AggregatorConfig) -> sqlite3.Connection:
    return store.connect(config.store.path, readonly=True)
