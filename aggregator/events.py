"""Grouping threats into threat events. Threats that share a group key (by default agent,
camera and rule; a camera of a site groups by its site) belong to one event until ``cutoff_s``
seconds (capture time) pass without one. One event -> one alert.

All functions run inside the writer's open transaction and return the lifecycle changes to
publish once it committed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from aggregator.config import EventsConfig
from wire.payloads import SEVERITY_RANK, EventMessage

KEY_ORDER = ("agent_id", "camera", "rule")


@dataclass(frozen=True)
class EventChange:
    """An event was created, grew in severity, or ended."""

    type: Literal["new", "update", "end"]
    event_id: int


@dataclass(frozen=True)
class Grouping:
    """How threats group into events (from ``events:`` in the config)."""

    cutoff_s: float
    group_by: tuple[str, ...] = KEY_ORDER
    sites: Mapping[str, str] = field(default_factory=dict)
    site_window_s: float | None = None

    @classmethod
    def from_config(cls, config: EventsConfig) -> Grouping:
        return cls(
            cutoff_s=config.cutoff_s,
            group_by=tuple(config.group_by),
            sites=dict(config.sites),
            site_window_s=config.site_window_s,
        )

    def key(self, *, agent_id: str, camera: str, rule: str) -> tuple[str, float]:
        """The group key of a threat and the inactivity (seconds) that ends its event."""
        site = self.sites.get(camera)
        if site is not None:
            parts = [f"site={site}"] + ([f"rule={rule}"] if "rule" in self.group_by else [])
            return "|".join(parts), self.site_window_s or self.cutoff_s
        values = {"agent_id": agent_id, "camera": camera, "rule": rule}
        parts = [f"{k}={values[k]}" for k in KEY_ORDER if k in self.group_by]
        return "|".join(parts), self.cutoff_s


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def end_stale(
    conn: sqlite3.Connection, *, group_key: str, before_ts: float, cutoff_s: float
) -> list[EventChange]:
    """End the open events of this key whose last threat is more than their cutoff before
    before_ts."""
    rows = conn.execute(
        "SELECT id FROM events WHERE group_key = ? AND ended_ts IS NULL "
        "AND last_seen_ts + COALESCE(cutoff_s, ?) < ?",
        (group_key, cutoff_s, before_ts),
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE events SET ended_ts = last_seen_ts WHERE id = ?", (row["id"],))
    return [EventChange("end", row["id"]) for row in rows]


def assign(
    conn: sqlite3.Connection,
    *,
    grouping: Grouping,
    agent_id: str,
    camera: str,
    rule: str,
    label: str,
    severity: str,
    score: float,
    captured_ts: float,
    message_id: str,
) -> tuple[int, list[EventChange]]:
    """The event this threat belongs to (extending or creating it) and the changes made."""
    group_key, cutoff_s = grouping.key(agent_id=agent_id, camera=camera, rule=rule)
    changes = end_stale(conn, group_key=group_key, before_ts=captured_ts, cutoff_s=cutoff_s)
    row = conn.execute(
        "SELECT * FROM events WHERE group_key = ? "
        "AND started_ts - ? <= ? AND last_seen_ts + ? >= ? "
        "ORDER BY last_seen_ts DESC LIMIT 1",
        (group_key, cutoff_s, captured_ts, cutoff_s, captured_ts),
    ).fetchone()
    if row is None:
        cur = conn.execute(
            "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, "
            "last_seen_ts, threat_count, top_score, top_message_id, group_key, cameras, "
            "cutoff_s) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
            (
                agent_id,
                camera,
                rule,
                label,
                severity,
                captured_ts,
                captured_ts,
                score,
                message_id,
                group_key,
                json.dumps([camera]),
                cutoff_s,
            ),
        )
        event_id = int(cur.lastrowid or 0)
        return event_id, [*changes, EventChange("new", event_id)]
    escalated = SEVERITY_RANK[severity] > SEVERITY_RANK[row["severity"]]
    better = score > row["top_score"]
    cameras = json.loads(row["cameras"] or "[]")
    if camera not in cameras:
        cameras.append(camera)
    conn.execute(
        "UPDATE events SET started_ts = MIN(started_ts, ?), last_seen_ts = MAX(last_seen_ts, ?), "
        "threat_count = threat_count + 1, severity = ?, top_score = MAX(top_score, ?), "
        "top_message_id = ?, label = ?, ended_ts = NULL, cameras = ? WHERE id = ?",
        (
            captured_ts,
            captured_ts,
            severity if escalated else row["severity"],
            score,
            message_id if better else row["top_message_id"],
            label if better else row["label"],
            json.dumps(cameras),
            row["id"],
        ),
    )
    if escalated:
        changes.append(EventChange("update", row["id"]))
    return int(row["id"]), changes


def end_idle(conn: sqlite3.Connection, *, now_ts: float, cutoff_s: float) -> list[EventChange]:
    """End every open event whose last threat is older than its cutoff (wall clock);
    ``cutoff_s`` is for events stored before events had their own."""
    rows = conn.execute(
        "SELECT id FROM events WHERE ended_ts IS NULL AND last_seen_ts + COALESCE(cutoff_s, ?) < ?",
        (cutoff_s, now_ts),
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE events SET ended_ts = last_seen_ts WHERE id = ?", (row["id"],))
    return [EventChange("end", row["id"]) for row in rows]


def event_message(conn: sqlite3.Connection, change: EventChange) -> EventMessage:
    """The public lifecycle message of an event, as it stands now."""
    row = conn.execute("SELECT * FROM events WHERE id = ?", (change.event_id,)).fetchone()
    cameras = json.loads(row["cameras"] or "[]") or [row["camera"]]
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
            "cameras": cameras,
            "summary": summary(row, cameras),
        }
    )


def summary(row: sqlite3.Row, cameras: list[str]) -> str:
    """One line about an event: severity, rule, cameras, threat count, top score, time range."""
    first = datetime.fromtimestamp(row["started_ts"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    last = datetime.fromtimestamp(row["last_seen_ts"], UTC).strftime("%H:%M:%S")
    state = "open" if row["ended_ts"] is None else "ended"
    return (
        f"{row['severity']} {row['rule']} on {', '.join(cameras)} ({row['agent_id']}): "
        f"{row['threat_count']} threat(s), top {row['label']} {row['top_score']:.2f}, "
        f"{first}-{last} UTC, {state}"
    )
