"""Grouping threats into threat events: per (agent, camera, rule), a new event starts after
``cutoff_s`` seconds (capture time) without a threat. One event -> one alert.

All functions run inside the writer's open transaction and return the lifecycle changes to
publish once it committed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from wire.payloads import SEVERITY_RANK, EventMessage


@dataclass(frozen=True)
class EventChange:
    """An event was created, grew in severity, or ended."""

    type: Literal["new", "update", "end"]
    event_id: int


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def end_stale(
    conn: sqlite3.Connection,
    *,
    agent_id: str,
    camera: str,
    rule: str,
    before_ts: float,
    cutoff_s: float,
) -> list[EventChange]:
    """End the open events of this key whose last threat is more than cutoff_s before before_ts."""
    rows = conn.execute(
        "SELECT id FROM events WHERE agent_id = ? AND camera = ? AND rule = ? "
        "AND ended_ts IS NULL AND last_seen_ts < ?",
        (agent_id, camera, rule, before_ts - cutoff_s),
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE events SET ended_ts = last_seen_ts WHERE id = ?", (row["id"],))
    return [EventChange("end", row["id"]) for row in rows]


def assign(
    conn: sqlite3.Connection,
    *,
    agent_id: str,
    camera: str,
    rule: str,
    label: str,
    severity: str,
    score: float,
    captured_ts: float,
    message_id: str,
    cutoff_s: float,
) -> tuple[int, list[EventChange]]:
    """The event this threat belongs to (extending or creating it) and the changes made."""
    changes = end_stale(
        conn, agent_id=agent_id, camera=camera, rule=rule, before_ts=captured_ts, cutoff_s=cutoff_s
    )
    row = conn.execute(
        "SELECT * FROM events WHERE agent_id = ? AND camera = ? AND rule = ? "
        "AND started_ts - ? <= ? AND last_seen_ts + ? >= ? "
        "ORDER BY last_seen_ts DESC LIMIT 1",
        (agent_id, camera, rule, cutoff_s, captured_ts, cutoff_s, captured_ts),
    ).fetchone()
    if row is None:
        cur = conn.execute(
            "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, "
            "last_seen_ts, threat_count, top_score, top_message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (agent_id, camera, rule, label, severity, captured_ts, captured_ts, score, message_id),
        )
        event_id = int(cur.lastrowid or 0)
        return event_id, [*changes, EventChange("new", event_id)]
    escalated = SEVERITY_RANK[severity] > SEVERITY_RANK[row["severity"]]
    better = score > row["top_score"]
    conn.execute(
        "UPDATE events SET started_ts = MIN(started_ts, ?), last_seen_ts = MAX(last_seen_ts, ?), "
        "threat_count = threat_count + 1, severity = ?, top_score = MAX(top_score, ?), "
        "top_message_id = ?, label = ?, ended_ts = NULL WHERE id = ?",
        (
            captured_ts,
            captured_ts,
            severity if escalated else row["severity"],
            score,
            message_id if better else row["top_message_id"],
            label if better else row["label"],
            row["id"],
        ),
    )
    if escalated:
        changes.append(EventChange("update", row["id"]))
    return int(row["id"]), changes


def end_idle(conn: sqlite3.Connection, *, now_ts: float, cutoff_s: float) -> list[EventChange]:
    """End every open event whose last threat is older than ``cutoff_s`` (wall clock)."""
    rows = conn.execute(
        "SELECT id FROM events WHERE ended_ts IS NULL AND last_seen_ts < ?", (now_ts - cutoff_s,)
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE events SET ended_ts = last_seen_ts WHERE id = ?", (row["id"],))
    return [EventChange("end", row["id"]) for row in rows]


def event_message(conn: sqlite3.Connection, change: EventChange) -> EventMessage:
    """The public lifecycle message of an event, as it stands now."""
    row = conn.execute("SELECT * FROM events WHERE id = ?", (change.event_id,)).fetchone()
    return EventMessage.model_validate(
        {
            "type": change.type,
            "event_id": row["id"],
            "agent_id": row["agent_id"],
            "camera": row["camera"],
            "rule": row["rule"],
            "severity": row["severity"],
            "label": row["label"],
            "started_at": _ts(row["started_ts"]),
            "last_seen_at": _ts(row["last_seen_ts"]),
            "ended_at": _ts(row["ended_ts"]),
            "threat_count": row["threat_count"],
            "top_score": row["top_score"],
        }
    )
