"""Threat messages and their threats (tables ``messages``, ``threats``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from aggregator.store.models import (
    HourlyCount,
    MessageRow,
    NewThreat,
    ThreatRow,
    ThreatWithMessage,
)
from aggregator.store.schema import Connection
from aggregator.store.where import Where

MESSAGE_COLUMNS = MessageRow._fields
_THREAT_COLUMNS = (
    "id, message_id, event_id, agent_id, camera, rule, severity, label, class_id, score, "
    "x1, y1, x2, y2, captured_ts"
)
_M = ", ".join(MESSAGE_COLUMNS)
_M_JOINED = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)
_T_JOINED = ", ".join(f"t.{c.strip()}" for c in _THREAT_COLUMNS.split(","))
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({_M}, content_key) "
    f"VALUES ({', '.join('?' * (len(MESSAGE_COLUMNS) + 1))}) ON CONFLICT DO NOTHING"
)
_INSERT_THREAT = (
    "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, label, "
    "class_id, score, x1, y1, x2, y2, captured_ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def content_key(
    agent_id: str,
    camera: str,
    frame_sha256: str,
    frame_kind: str,
    frame_source: str,
    model_sha256: str,
    rules_sha256: str,
) -> str:
    """What makes two threat messages the same, whatever their message ids: the agent, the
    camera, the frame, the model and the rules. A video frame is also its position in the video
    (``frame_source`` is ``path#index``): its sha256 is of pixels, and a still scene gives
    identical pixels at different moments, each a sighting of its own. A still is its bytes."""
    position = frame_source if frame_kind == "video" else ""
    raw = "\x1f".join((agent_id, camera, frame_sha256, model_sha256, rules_sha256, position))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _key_of(m: MessageRow) -> str:
    return content_key(
        m.agent_id,
        m.camera,
        m.frame_sha256,
        m.frame_kind,
        m.frame_source,
        m.model_sha256,
        m.rules_sha256,
    )


def _message(row: Sequence[Any]) -> MessageRow:
    return MessageRow(*row)


def _threat(row: Sequence[Any]) -> ThreatRow:
    return ThreatRow(
        id=row[0],
        message_id=row[1],
        event_id=row[2],
        agent_id=row[3],
        camera=row[4],
        rule=row[5],
        severity=row[6],
        label=row[7],
        class_id=row[8],
        score=row[9],
        xyxy=(row[10], row[11], row[12], row[13]),
        captured_ts=row[14],
    )


def insert(conn: Connection, message: MessageRow) -> bool:
    """Store a message; False when it is already stored, by its id (a redelivery) or by its
    content (:func:`content_key`: the same frame, model and rules sent again with a new id)."""
    cur = conn.execute(_INSERT_MESSAGE, (*message, _key_of(message)))
    return cur.rowcount == 1


def stored_as(conn: Connection, message: MessageRow) -> str | None:
    """The id of the stored message that ``message`` duplicates (itself for a redelivery)."""
    row = conn.execute(
        "SELECT message_id FROM messages WHERE message_id = ? OR content_key = ? "
        "ORDER BY message_id = ? DESC LIMIT 1",
        (message.message_id, _key_of(message), message.message_id),
    ).fetchone()
    return None if row is None else str(row[0])


def get(conn: Connection, message_id: str) -> MessageRow | None:
    row = conn.execute(f"SELECT {_M} FROM messages WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _message(row)


def all_by_arrival(conn: Connection) -> Iterator[MessageRow]:
    """Every stored message, oldest first (the lineage backfill)."""
    for row in conn.execute(f"SELECT {_M} FROM messages ORDER BY received_at, rowid").fetchall():
        yield _message(row)


def of_event(conn: Connection, event_id: int) -> list[MessageRow]:
    """The messages of an event's threats, in capture order."""
    rows = conn.execute(
        f"SELECT {_M} FROM messages WHERE message_id IN "
        "(SELECT message_id FROM threats WHERE event_id = ?) ORDER BY captured_ts, message_id",
        (event_id,),
    )
    return [_message(r) for r in rows]


def snapshot_sha256(conn: Connection, message_id: str) -> str | None:
    """The sha256 of the snapshot a message came with (None: none, or no such message)."""
    row = conn.execute(
        "SELECT snapshot_sha256 FROM messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    return None if row is None else row[0]


def snapshot_referenced(conn: Connection, sha256: str) -> bool:
    """Does a stored message refer to this snapshot?"""
    row = conn.execute(
        "SELECT 1 FROM messages WHERE snapshot_sha256 = ? LIMIT 1", (sha256,)
    ).fetchone()
    return row is not None


def snapshots_last_captured_before(conn: Connection, before_ts: float) -> list[str]:
    """Snapshot sha256s whose newest referring message was captured before ``before_ts``."""
    rows = conn.execute(
        "SELECT snapshot_sha256 FROM messages WHERE snapshot_sha256 IS NOT NULL "
        "GROUP BY snapshot_sha256 HAVING MAX(captured_ts) < ?",
        (before_ts,),
    )
    return [str(r[0]) for r in rows]


def insert_threats(conn: Connection, threats: Sequence[NewThreat]) -> None:
    conn.executemany(
        _INSERT_THREAT,
        [
            (
                t.message_id,
                t.event_id,
                t.agent_id,
                t.camera,
                t.rule,
                t.severity,
                t.label,
                t.class_id,
                t.score,
                *t.xyxy,
                t.captured_ts,
            )
            for t in threats
        ],
    )


def threats_of_message(conn: Connection, message_id: str) -> list[ThreatRow]:
    rows = conn.execute(
        f"SELECT {_THREAT_COLUMNS} FROM threats WHERE message_id = ? ORDER BY id", (message_id,)
    )
    return [_threat(r) for r in rows]


def event_ids_of(conn: Connection, message_id: str) -> list[int]:
    """The events a message's threats went into."""
    rows = conn.execute(
        "SELECT DISTINCT event_id FROM threats WHERE message_id = ? ORDER BY event_id",
        (message_id,),
    )
    return [int(r[0]) for r in rows]


def _with_message(rows: Iterator[Any]) -> list[ThreatWithMessage]:
    n = 15
    return [ThreatWithMessage(_threat(r[:n]), _message(r[n:])) for r in rows]


_THREATS_WITH_MESSAGES = (
    f"SELECT {_T_JOINED}, {_M_JOINED} FROM threats t JOIN messages m ON m.message_id = t.message_id"
)


def list_threats(
    conn: Connection,
    *,
    limit: int,
    camera: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    since_ts: float | None = None,
    before_id: int | None = None,
) -> list[ThreatWithMessage]:
    """Threats with their messages, newest first (``before_id``: the next page)."""
    where = (
        Where()
        .equals("t.camera", camera)
        .equals("t.agent_id", agent_id)
        .equals("t.rule", rule)
        .at_least("t.captured_ts", since_ts)
        .below("t.id", before_id)
    )
    rows = conn.execute(
        f"{_THREATS_WITH_MESSAGES}{where.sql} ORDER BY t.id DESC LIMIT ?", [*where.args, limit]
    )
    return _with_message(rows)


def threats_of_event(conn: Connection, event_id: int) -> list[ThreatWithMessage]:
    """An event's threats with their messages, in capture order."""
    rows = conn.execute(
        f"{_THREATS_WITH_MESSAGES} WHERE t.event_id = ? ORDER BY t.captured_ts, t.id", (event_id,)
    )
    return _with_message(rows)


def _plot_where(
    *, since_ts: float | None, until_ts: float | None, camera: str | None, agent_id: str | None
) -> Where:
    return (
        Where()
        .at_least("captured_ts", since_ts)
        .below("captured_ts", until_ts)
        .equals("camera", camera)
        .equals("agent_id", agent_id)
    )


def hourly_threat_counts(
    conn: Connection,
    *,
    since_ts: float | None = None,
    until_ts: float | None = None,
    camera: str | None = None,
    agent_id: str | None = None,
) -> tuple[list[HourlyCount], list[int]]:
    """Threats per hour of capture time and camera, and the ids of the events they are in."""
    where = _plot_where(since_ts=since_ts, until_ts=until_ts, camera=camera, agent_id=agent_id)
    rows = conn.execute(
        "SELECT CAST(captured_ts / 3600 AS INTEGER) * 3600 AS hour, camera, COUNT(*) "
        f"FROM threats{where.sql} GROUP BY hour, camera ORDER BY hour, camera",
        where.args,
    )
    counts = [HourlyCount(hour_ts=int(r[0]), camera=r[1], count=int(r[2])) for r in rows]
    event_ids = [
        int(r[0])
        for r in conn.execute(
            f"SELECT DISTINCT event_id FROM threats{where.sql} ORDER BY event_id", where.args
        )
    ]
    return counts, event_ids
