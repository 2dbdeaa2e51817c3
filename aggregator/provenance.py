"""Lineage on SQLite (W3C PROV: used / wasGeneratedBy): content-addressed artifacts, the runs
that used and generated them, and recursive queries up and down the graph.

Artifact ids are typed strings: ``frame:<sha256>``, ``model:<sha256>``, ``rules:<sha256>``,
``config:<sha256>``, ``code:<version>``, ``detections:<sha256 of canonical JSON>``,
``snapshot:<sha256>``, ``message:<id>``, ``event:<id>``, ``notification:<id>``, ``plot:<sha256>``.

What one threat message records (all runs of one frame share its lineage id)::

    validate  used frame, config, code          generated snapshot (when the agent sent one)
    detect    used frame, model, config, code   generated detections
    rules     used detections, rules, code,     generated message (with the snapshot)
              snapshot
    group     used message, code (aggregator)   generated event(s)
    notify    used event, code                  generated notification
    plot      used events, code                 generated plot

Every writer here runs inside the caller's open transaction (the ingest writer's, for messages
and events), so lineage is exactly as durable as the data it describes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from wire.payloads import ThreatMessage

ARTIFACT_KINDS = (
    "frame",
    "model",
    "rules",
    "config",
    "code",
    "detections",
    "snapshot",
    "message",
    "event",
    "notification",
    "plot",
)
RUN_KINDS = ("validate", "detect", "rules", "group", "notify", "plot")
MAX_DEPTH = 32


class ProvenanceError(ValueError):
    """An artifact id is malformed or not known to the store."""


def parse_artifact_id(artifact_id: str) -> tuple[str, str]:
    """``"event:12"`` -> ``("event", "12")``; ProvenanceError for an unknown kind."""
    kind, sep, key = artifact_id.partition(":")
    if not sep or not key or kind not in ARTIFACT_KINDS:
        raise ProvenanceError(
            f"{artifact_id!r} is not an artifact id (kind:key, kinds: {', '.join(ARTIFACT_KINDS)})"
        )
    return kind, key


def canonical_sha256(value: object) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def add_artifact(
    conn: sqlite3.Connection, artifact_id: str, *, at_ts: float, meta: dict[str, Any] | None = None
) -> str:
    """Record an artifact (idempotent: the first record of an id is kept); return its id."""
    kind, _ = parse_artifact_id(artifact_id)
    conn.execute(
        "INSERT INTO artifacts (id, kind, created_ts, meta_json) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (artifact_id, kind, at_ts, json.dumps(meta or {}, sort_keys=True)),
    )
    return artifact_id


def add_run(
    conn: sqlite3.Connection,
    *,
    kind: str,
    code_version: str,
    at_ts: float,
    used: list[tuple[str, str]],
    generated: list[str],
    lineage_id: str | None = None,
    agent_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> int:
    """Record one run: ``used`` is (artifact id, role) pairs; every artifact must exist."""
    if kind not in RUN_KINDS:
        raise ProvenanceError(f"run kind {kind!r} is not one of {RUN_KINDS}")
    cur = conn.execute(
        "INSERT INTO runs (kind, lineage_id, agent_id, code_version, at_ts, meta_json) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (kind, lineage_id, agent_id, code_version, at_ts, json.dumps(meta or {}, sort_keys=True)),
    )
    run_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO used (run_id, artifact_id, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(run_id, aid, role) for aid, role in used],
    )
    conn.executemany(
        "INSERT INTO generated (run_id, artifact_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(run_id, aid) for aid in generated],
    )
    return run_id


# what the ingest records -------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageLineage:
    """The facts of one stored threat message that its lineage is made of."""

    message_id: str
    agent_id: str
    camera: str
    lineage_id: str
    frame_id: str
    frame_sha256: str
    frame_kind: str
    frame_source: str
    frame_width: int
    frame_height: int
    captured_ts: float
    code_version: str
    model_sha256: str
    rules_sha256: str
    config_sha256: str
    snapshot_sha256: str | None
    detections: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of_message(cls, msg: ThreatMessage, *, snapshot_sha256: str | None) -> MessageLineage:
        return cls(
            message_id=msg.message_id,
            agent_id=msg.agent_id,
            camera=msg.camera,
            lineage_id=msg.lineage_id,
            frame_id=msg.frame.frame_id,
            frame_sha256=msg.frame.sha256,
            frame_kind=msg.frame.kind,
            frame_source=msg.frame.source,
            frame_width=msg.frame.width,
            frame_height=msg.frame.height,
            captured_ts=msg.frame.captured_at.timestamp(),
            code_version=msg.versions.code,
            model_sha256=msg.versions.model_sha256,
            rules_sha256=msg.versions.rules_sha256,
            config_sha256=msg.versions.config_sha256,
            snapshot_sha256=snapshot_sha256,
            detections=[d.model_dump(mode="json") for d in msg.detections],
        )

    @classmethod
    def of_row(cls, row: sqlite3.Row) -> MessageLineage:
        """From a ``messages`` row (the backfill of stores older than the lineage tables)."""
        return cls(
            message_id=row["message_id"],
            agent_id=row["agent_id"],
            camera=row["camera"],
            lineage_id=row["lineage_id"],
            frame_id=row["frame_id"],
            frame_sha256=row["frame_sha256"],
            frame_kind=row["frame_kind"],
            frame_source=row["frame_source"],
            frame_width=row["frame_width"],
            frame_height=row["frame_height"],
            captured_ts=row["captured_ts"],
            code_version=row["code_version"],
            model_sha256=row["model_sha256"],
            rules_sha256=row["rules_sha256"],
            config_sha256=row["config_sha256"],
            snapshot_sha256=row["snapshot_sha256"],
            detections=json.loads(row["detections_json"]),
        )


def record_message(conn: sqlite3.Connection, m: MessageLineage) -> str:
    """The agent's validate, detect and rules runs of one threat message; returns the message's
    artifact id. The runs are recorded from what the message carries (versions, lineage, frame)."""
    at = m.captured_ts
    frame = add_artifact(
        conn,
        f"frame:{m.frame_sha256}",
        at_ts=at,
        meta={
            "frame_id": m.frame_id,
            "kind": m.frame_kind,
            "source": m.frame_source,
            "width": m.frame_width,
            "height": m.frame_height,
            "agent_id": m.agent_id,
            "camera": m.camera,
        },
    )
    model = add_artifact(conn, f"model:{m.model_sha256}", at_ts=at)
    rules = add_artifact(conn, f"rules:{m.rules_sha256}", at_ts=at)
    config = add_artifact(
        conn, f"config:{m.config_sha256}", at_ts=at, meta={"agent_id": m.agent_id}
    )
    code = add_artifact(conn, f"code:{m.code_version}", at_ts=at)
    detections = add_artifact(
        conn,
        f"detections:{canonical_sha256(m.detections)}",
        at_ts=at,
        meta={"count": len(m.detections)},
    )
    message = add_artifact(
        conn,
        f"message:{m.message_id}",
        at_ts=at,
        meta={"agent_id": m.agent_id, "camera": m.camera, "frame_id": m.frame_id},
    )
    common: dict[str, Any] = {
        "code_version": m.code_version,
        "at_ts": at,
        "lineage_id": m.lineage_id,
        "agent_id": m.agent_id,
        "meta": {"frame_id": m.frame_id, "camera": m.camera},
    }
    validated: list[str] = []
    if m.snapshot_sha256:
        validated.append(add_artifact(conn, f"snapshot:{m.snapshot_sha256}", at_ts=at))
    add_run(
        conn,
        kind="validate",
        used=[(frame, "input"), (config, "config"), (code, "code")],
        generated=validated,
        **common,
    )
    add_run(
        conn,
        kind="detect",
        used=[(frame, "input"), (model, "model"), (config, "config"), (code, "code")],
        generated=[detections],
        **common,
    )
    add_run(
        conn,
        kind="rules",
        used=[(detections, "input"), (rules, "rules"), (code, "code")]
        + [(snap, "snapshot") for snap in validated],
        generated=[message],
        **common,
    )
    return message


def record_grouping(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    event_ids: list[int],
    lineage_id: str,
    agent_id: str,
    code_version: str,
    at_ts: float,
) -> int:
    """The aggregator's group run: the message's threats went into these events."""
    code = add_artifact(conn, f"code:{code_version}", at_ts=at_ts)
    events = [add_artifact(conn, f"event:{e}", at_ts=at_ts) for e in sorted(set(event_ids))]
    return add_run(
        conn,
        kind="group",
        code_version=code_version,
        at_ts=at_ts,
        used=[(f"message:{message_id}", "input"), (code, "code")],
        generated=events,
        lineage_id=lineage_id,
        agent_id=agent_id,
    )


def backfill_message(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Lineage of a message stored before the lineage tables existed (migration m005_provenance)."""
    record_message(conn, MessageLineage.of_row(row))
    event_ids = [
        int(r[0])
        for r in conn.execute(
            "SELECT DISTINCT event_id FROM threats WHERE message_id = ?", (row["message_id"],)
        )
    ]
    record_grouping(
        conn,
        message_id=row["message_id"],
        event_ids=event_ids,
        lineage_id=row["lineage_id"],
        agent_id=row["agent_id"],
        code_version="unknown (backfilled)",
        at_ts=row["captured_ts"],
    )


def record_notification(
    conn: sqlite3.Connection,
    *,
    notification_id: int,
    event_id: int,
    content_sha256: str,
    code_version: str,
    channel: str,
    at_ts: float | None = None,
) -> str:
    """The notify run of one notification (inside the caller's transaction); returns its id."""
    at = time.time() if at_ts is None else at_ts
    event = add_artifact(conn, f"event:{event_id}", at_ts=at)
    code = add_artifact(conn, f"code:{code_version}", at_ts=at)
    notification = add_artifact(
        conn,
        f"notification:{notification_id}",
        at_ts=at,
        meta={"content_sha256": content_sha256, "channel": channel, "event_id": event_id},
    )
    add_run(
        conn,
        kind="notify",
        code_version=code_version,
        at_ts=at,
        used=[(event, "input"), (code, "code")],
        generated=[notification],
        meta={"channel": channel},
    )
    return notification


def record_plot(
    conn: sqlite3.Connection,
    *,
    plot_sha256: str,
    kind: str,
    query: dict[str, Any],
    event_ids: list[int],
    code_version: str,
    at_ts: float,
) -> str:
    """The plot run: which events (and code) a plot was drawn from; returns its id."""
    code = add_artifact(conn, f"code:{code_version}", at_ts=at_ts)
    events = [add_artifact(conn, f"event:{e}", at_ts=at_ts) for e in sorted(set(event_ids))]
    plot = add_artifact(
        conn, f"plot:{plot_sha256}", at_ts=at_ts, meta={"plot_kind": kind, "query": query}
    )
    add_run(
        conn,
        kind="plot",
        code_version=code_version,
        at_ts=at_ts,
        used=[*((e, "input") for e in events), (code, "code")],
        generated=[plot],
        meta={"query": query},
    )
    return plot
