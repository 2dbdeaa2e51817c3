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
import time
from typing import Any

from aggregator import store
from aggregator.store.models import MessageRow, NewArtifact, NewRun

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
    "release",
    "software",
    "shadow",
)
_KINDS = frozenset(ARTIFACT_KINDS)
RUN_KINDS = ("validate", "detect", "rules", "group", "notify", "plot", "release", "ota", "shadow")


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


def artifact(
    kind: str, key: object, *, at_ts: float, meta: dict[str, Any] | None = None
) -> NewArtifact:
    """An artifact to record: ``kind:key``."""
    if kind not in _KINDS:
        raise ProvenanceError(f"artifact kind {kind!r} is not one of {ARTIFACT_KINDS}")
    return NewArtifact(f"{kind}:{key}", kind, at_ts, meta)


def run(
    *,
    kind: str,
    code_version: str,
    at_ts: float,
    used: list[tuple[str, str]],
    generated: list[str],
    lineage_id: str | None = None,
    agent_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> NewRun:
    """A run to record: ``used`` is (artifact id, role) pairs; every artifact must exist."""
    if kind not in RUN_KINDS:
        raise ProvenanceError(f"run kind {kind!r} is not one of {RUN_KINDS}")
    return NewRun(kind, code_version, at_ts, used, generated, lineage_id, agent_id, meta)


# what the ingest records -------------------------------------------------------------------------
def record_message(
    conn: store.Connection,
    m: MessageRow,
    *,
    detections: list[dict[str, Any]],
) -> str:
    """The agent's validate, detect and rules runs of one stored threat message (``detections``:
    its detections, parsed); returns the message's artifact id. The runs are recorded from what
    the message carries (versions, lineage, frame)."""
    at = m.captured_ts
    frame = artifact(
        "frame",
        m.frame_sha256,
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
    model = artifact("model", m.model_sha256, at_ts=at)
    rules = artifact("rules", m.rules_sha256, at_ts=at)
    config = artifact("config", m.config_sha256, at_ts=at, meta={"agent_id": m.agent_id})
    code = artifact("code", m.code_version, at_ts=at)
    found = artifact(
        "detections", canonical_sha256(detections), at_ts=at, meta={"count": len(detections)}
    )
    message = artifact(
        "message",
        m.message_id,
        at_ts=at,
        meta={"agent_id": m.agent_id, "camera": m.camera, "frame_id": m.frame_id},
    )
    snapshot = [artifact("snapshot", m.snapshot_sha256, at_ts=at)] if m.snapshot_sha256 else []
    recorded = [frame, model, rules, config, code, found, message, *snapshot]
    store.lineage.add_artifacts(conn, recorded)
    common: dict[str, Any] = {
        "code_version": m.code_version,
        "at_ts": at,
        "lineage_id": m.lineage_id,
        "agent_id": m.agent_id,
        "meta": {"frame_id": m.frame_id, "camera": m.camera},
    }
    validated = [s.id for s in snapshot]
    store.lineage.add_runs(
        conn,
        [
            run(
                kind="validate",
                used=[(frame.id, "input"), (config.id, "config"), (code.id, "code")],
                generated=validated,
                **common,
            ),
            run(
                kind="detect",
                used=[
                    (frame.id, "input"),
                    (model.id, "model"),
                    (config.id, "config"),
                    (code.id, "code"),
                ],
                generated=[found.id],
                **common,
            ),
            run(
                kind="rules",
                used=[(found.id, "input"), (rules.id, "rules"), (code.id, "code")]
                + [(snap, "snapshot") for snap in validated],
                generated=[message.id],
                **common,
            ),
        ],
    )
    return message.id


def record_grouping(
    conn: store.Connection,
    *,
    message_id: str,
    event_ids: list[int],
    lineage_id: str,
    agent_id: str,
    code_version: str,
    at_ts: float,
) -> int:
    """The aggregator's group run: the message's threats went into these events."""
    code = artifact("code", code_version, at_ts=at_ts)
    events = [artifact("event", e, at_ts=at_ts) for e in sorted(set(event_ids))]
    store.lineage.add_artifacts(conn, [code, *events])
    return store.lineage.add_run(
        conn,
        run(
            kind="group",
            code_version=code_version,
            at_ts=at_ts,
            used=[(f"message:{message_id}", "input"), (code.id, "code")],
            generated=[e.id for e in events],
            lineage_id=lineage_id,
            agent_id=agent_id,
        ),
    )


def backfill_message(conn: store.Connection, message: MessageRow, *, event_ids: list[int]) -> None:
    """Lineage of a message stored before the lineage tables existed (migration m005_provenance)."""
    record_message(conn, message, detections=message.detections)
    record_grouping(
        conn,
        message_id=message.message_id,
        event_ids=event_ids,
        lineage_id=message.lineage_id,
        agent_id=message.agent_id,
        code_version="unknown (backfilled)",
        at_ts=message.captured_ts,
    )


def record_notification(
    conn: store.Connection,
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
    event = artifact("event", event_id, at_ts=at)
    code = artifact("code", code_version, at_ts=at)
    notification = artifact(
        "notification",
        notification_id,
        at_ts=at,
        meta={"content_sha256": content_sha256, "channel": channel, "event_id": event_id},
    )
    store.lineage.add_artifacts(conn, [event, code, notification])
    store.lineage.add_run(
        conn,
        run(
            kind="notify",
            code_version=code_version,
            at_ts=at,
            used=[(event.id, "input"), (code.id, "code")],
            generated=[notification.id],
            meta={"channel": channel},
        ),
    )
    return notification.id


def record_plot(
    conn: store.Connection,
    *,
    plot_sha256: str,
    kind: str,
    query: dict[str, Any],
    event_ids: list[int],
    code_version: str,
    at_ts: float,
) -> str:
    """The plot run: which events (and code) a plot was drawn from; returns its id."""
    code = artifact("code", code_version, at_ts=at_ts)
    events = [artifact("event", e, at_ts=at_ts) for e in sorted(set(event_ids))]
    plot = artifact("plot", plot_sha256, at_ts=at_ts, meta={"plot_kind": kind, "query": query})
    store.lineage.add_artifacts(conn, [code, *events, plot])
    store.lineage.add_run(
        conn,
        run(
            kind="plot",
            code_version=code_version,
            at_ts=at_ts,
            used=[*((e.id, "input") for e in events), (code.id, "code")],
            generated=[plot.id],
            meta={"query": query},
        ),
    )
    return plot.id
