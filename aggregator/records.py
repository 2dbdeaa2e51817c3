"""What one received message does to the store, inside the writer's open transaction.

Threat messages become a ``messages`` row (with provenance), ``threats`` rows and event changes;
status messages update the ``agents`` row. Both raise :class:`PayloadError` for a message that
must be refused (it is then counted, and acknowledged so the broker does not resend it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aggregator import events, provenance, store
from aggregator.events import EventChange
from appcommon.version import code_version
from wire.payloads import PayloadError, StatusMessage, ThreatMessage, parse_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What storing one message did."""

    kind: str  # "stored", "duplicate", "status"
    changes: list[EventChange] = field(default_factory=list)
    agent_id: str = ""
    message_id: str | None = None  # threat messages: what the receipt confirms
    camera: str = ""
    lineage_id: str = ""
    threats: int = 0


def save_snapshot(snapshots_dir: Path, jpeg_b64: str) -> str:
    """Write the snapshot under its sha256 (idempotent); return the sha256."""
    try:
        jpeg = base64.b64decode(jpeg_b64, validate=True)
    except binascii.Error as exc:
        raise PayloadError("schema_violation", f"snapshot is not base64: {exc}") from exc
    if not jpeg.startswith(b"\xff\xd8"):
        raise PayloadError("schema_violation", "snapshot is not a JPEG")
    sha = hashlib.sha256(jpeg).hexdigest()
    path = snapshots_dir / sha[:2] / f"{sha}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(jpeg)
        tmp.replace(path)
    return sha


def check_agent(topic: str, agent_id: str) -> None:
    """The agent id in the topic must be the one in the payload (the broker's ACL vouches for
    the topic)."""
    try:
        topic_agent = Topics.agent_of(topic)
    except TopicError as exc:
        raise PayloadError("bad_topic", str(exc)) from exc
    if topic_agent != agent_id:
        raise PayloadError("agent_mismatch", f"topic says {topic_agent}, payload {agent_id}")


def record_threat(
    conn: sqlite3.Connection,
    topic: str,
    payload: bytes,
    *,
    snapshots_dir: Path,
    grouping: events.Grouping,
) -> Outcome:
    threat = parse_payload(payload, ThreatMessage)
    check_agent(topic, threat.agent_id)
    snapshot_sha = (
        save_snapshot(snapshots_dir, threat.snapshot_jpeg_b64) if threat.snapshot_jpeg_b64 else None
    )
    now = datetime.now(UTC)
    if not store.insert_message(
        conn, threat, received_at=now.isoformat(), snapshot_sha256=snapshot_sha
    ):
        log.info("agent=%s message=%s duplicate ignored", threat.agent_id, threat.message_id)
        return Outcome("duplicate", agent_id=threat.agent_id, message_id=threat.message_id)
    conn.execute(
        "INSERT INTO agents (agent_id, state, last_seen_ts) VALUES (?, 'online', ?) "
        "ON CONFLICT (agent_id) DO UPDATE SET "
        "last_seen_ts = MAX(last_seen_ts, excluded.last_seen_ts)",
        (threat.agent_id, now.timestamp()),
    )
    captured_ts = threat.frame.captured_at.timestamp()
    outcome = Outcome(
        "stored",
        agent_id=threat.agent_id,
        message_id=threat.message_id,
        camera=threat.camera,
        lineage_id=threat.lineage_id,
        threats=len(threat.threats),
    )
    provenance.record_message(
        conn, provenance.MessageLineage.of_message(threat, snapshot_sha256=snapshot_sha)
    )
    event_ids: list[int] = []
    for t in threat.threats:
        event_id, changes = events.assign(
            conn,
            grouping=grouping,
            agent_id=threat.agent_id,
            camera=threat.camera,
            rule=t.rule,
            label=t.label,
            severity=t.severity,
            score=t.score,
            captured_ts=captured_ts,
            message_id=threat.message_id,
        )
        outcome.changes += changes
        event_ids.append(event_id)
        conn.execute(
            "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, label, "
            "class_id, score, x1, y1, x2, y2, captured_ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                threat.message_id,
                event_id,
                threat.agent_id,
                threat.camera,
                t.rule,
                t.severity,
                t.label,
                t.class_id,
                t.score,
                *t.xyxy,
                captured_ts,
            ),
        )
    provenance.record_grouping(
        conn,
        message_id=threat.message_id,
        event_ids=event_ids,
        lineage_id=threat.lineage_id,
        agent_id=threat.agent_id,
        code_version=code_version(),
        at_ts=now.timestamp(),
    )
    log.debug(
        "agent=%s camera=%s frame=%s lineage=%s message=%s stored %d threat(s)",
        threat.agent_id,
        threat.camera,
        threat.frame.frame_id,
        threat.lineage_id,
        threat.message_id,
        len(threat.threats),
    )
    return outcome


def record_status(conn: sqlite3.Connection, topic: str, payload: bytes) -> Outcome:
    if not payload:
        return Outcome("status")  # a retained status being cleared
    status = parse_payload(payload, StatusMessage)
    check_agent(topic, status.agent_id)
    now = datetime.now(UTC).timestamp()
    conn.execute(
        """INSERT INTO agents (agent_id, state, last_seen_ts, last_status_ts, status_sent_ts,
               versions_json, provider, outbox_depth, outbox_dropped, outbox_oldest_age_s,
               cameras_json)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (agent_id) DO UPDATE SET
               state = excluded.state, last_seen_ts = MAX(last_seen_ts, excluded.last_seen_ts),
               last_status_ts = excluded.last_status_ts, status_sent_ts = excluded.status_sent_ts,
               versions_json = COALESCE(excluded.versions_json, versions_json),
               provider = COALESCE(excluded.provider, provider),
               outbox_depth = excluded.outbox_depth, outbox_dropped = excluded.outbox_dropped,
               outbox_oldest_age_s = excluded.outbox_oldest_age_s,
               cameras_json = CASE WHEN excluded.cameras_json = '[]' THEN cameras_json
                                   ELSE excluded.cameras_json END
           WHERE agents.status_sent_ts IS NULL OR excluded.status_sent_ts >= agents.status_sent_ts
        """,
        (
            status.agent_id,
            status.state,
            now,
            now,
            status.sent_at.timestamp(),
            status.versions.model_dump_json() if status.versions else None,
            status.provider,
            status.outbox_depth,
            status.outbox_dropped,
            status.outbox_oldest_age_s,
            json.dumps([c.model_dump(mode="json") for c in status.cameras]),
        ),
    )
    log.info(
        "agent=%s is %s (outbox depth %d, dropped %d)",
        status.agent_id,
        status.state,
        status.outbox_depth,
        status.outbox_dropped,
    )
    return Outcome("status")
