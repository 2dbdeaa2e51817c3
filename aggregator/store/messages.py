"""Threat messages and their threats (tables ``messages``, ``threats``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aggregator.store.backend import is_postgres
from aggregator.store.models import (
    HourlyCount,
    MessageRow,
    NewThreat,
    ThreatRow,
    ThreatWithMessage,
)
from aggregator.store.schema import Connection, insert_values
from aggregator.store.where import Where

MESSAGE_COLUMNS = MessageRow._fields
_BASE_COLUMNS = ", ".join(MESSAGE_COLUMNS[: MESSAGE_COLUMNS.index("detections_json") + 1])
"""The columns of the first release (migration m001): what the lineage backfill reads."""
_THREAT_COLUMNS = (
    "id, message_id, event_id, agent_id, camera, rule, severity, label, class_id, score, "
    "x1, y1, x2, y2, captured_ts"
)
_M = ", ".join(MESSAGE_COLUMNS)
_M_JOINED = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)
_T_JOINED = ", ".join(f"t.{c.strip()}" for c in _THREAT_COLUMNS.split(","))
_INSERT_MESSAGES = f"INSERT INTO messages ({_M}, content_key) VALUES"
_INSERT_THREATS = (
    "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, label, "
    "class_id, score, x1, y1, x2, y2, captured_ts) VALUES"
)
_CHUNK = 400
"""Values bound in one ``IN (...)``."""


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


def key_of(m: MessageRow) -> str:
    """The :func:`content_key` of a message."""
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


def _chunks(values: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        yield chunk, ",".join("?" * len(chunk))


def stored(
    conn: Connection, *, message_ids: Sequence[str], content_keys: Sequence[str]
) -> dict[str, str]:
    """Which of these are stored already: each message id or content key
    (:func:`content_key`) found -> the id of the stored message that has it."""
    found: dict[str, str] = {}
    for column, values in (("message_id", message_ids), ("content_key", content_keys)):
        for chunk, marks in _chunks(values):
            for r in conn.execute(
                f"SELECT {column}, message_id FROM messages WHERE {column} IN ({marks})", chunk
            ):
                found[str(r[0])] = str(r[1])
    return found


def insert_many(conn: Connection, messages: Sequence[tuple[MessageRow, str]]) -> None:
    """Store messages, each with its content key, in as few statements as SQLite allows
    (:func:`~aggregator.store.schema.insert_values`). They must not be stored yet
    (:func:`stored`): IntegrityError otherwise."""
    insert_values(conn, _INSERT_MESSAGES, [(*m, key) for m, key in messages])


def get(conn: Connection, message_id: str) -> MessageRow | None:
    row = conn.execute(f"SELECT {_M} FROM messages WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _message(row)


def get_many(conn: Connection, message_ids: Sequence[str]) -> dict[str, MessageRow]:
    """The stored ones of these messages, by id: one statement for up to 400 of them (a page
    of event cards), not one a message, which costs a round trip each on PostgreSQL."""
    found: dict[str, MessageRow] = {}
    for chunk, marks in _chunks(sorted(set(message_ids))):
        for r in conn.execute(f"SELECT {_M} FROM messages WHERE message_id IN ({marks})", chunk):
            found[str(r[0])] = _message(r)
    return found


def all_by_arrival(conn: Connection) -> Iterator[MessageRow]:
    """Every stored message, oldest first, with the columns of the first release (the lineage
    backfill of migration m005)."""
    then = "message_id" if is_postgres(conn) else "rowid"  # PostgreSQL has no rowid
    rows = conn.execute(f"SELECT {_BASE_COLUMNS} FROM messages ORDER BY received_at, {then}")
    for row in rows.fetchall():
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


def referring_to_snapshot(conn: Connection, sha256: str) -> list[str]:
    """The ids of the messages that came with this snapshot."""
    rows = conn.execute("SELECT message_id FROM messages WHERE snapshot_sha256 = ?", (sha256,))
    return [str(r[0]) for r in rows]


def snapshots_last_captured_before(
    conn: Connection, before_ts: float, *, since_ts: float | None = None
) -> list[str]:
    """Snapshot sha256s whose newest referring message was captured before ``before_ts``
    (``since_ts``: only those of messages captured since then, for a pass that looked at the
    older ones before)."""
    rows = conn.execute(
        "SELECT DISTINCT m.snapshot_sha256 FROM messages m WHERE m.captured_ts < ? "
        "AND m.captured_ts >= ? AND m.snapshot_sha256 IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM messages n WHERE n.snapshot_sha256 = m.snapshot_sha256 "
        "AND n.captured_ts >= ?)",
        (before_ts, -1e300 if since_ts is None else since_ts, before_ts),
    )
    return [str(r[0]) for r in rows]


def insert_threats(conn: Connection, threats: Sequence[NewThreat]) -> None:
    insert_values(
        conn,
        _INSERT_THREATS,
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


def threats_of_messages(conn: Connection, message_ids: Sequence[str]) -> dict[str, list[ThreatRow]]:
    """:func:`threats_of_message` of each of these messages (those with threats), in one
    statement for up to 400 of them."""
    found: dict[str, list[ThreatRow]] = {}
    for chunk, marks in _chunks(sorted(set(message_ids))):
        rows = conn.execute(
            f"SELECT {_THREAT_COLUMNS} FROM threats WHERE message_id IN ({marks}) ORDER BY id",
            chunk,
        )
        for r in rows:
            found.setdefault(str(r[1]), []).append(_threat(r))
    return found


def event_ids_of(conn: Connection, message_id: str) -> list[int]:
    """The events a message's threats went into."""
    rows = conn.execute(
        "SELECT DISTINCT event_id FROM threats WHERE message_id = ? ORDER BY event_id",
        (message_id,),
    )
    return [int(r[0]) for r in rows]


def _with_message(rows: Iterable[Any]) -> list[ThreatWithMessage]:
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
    until_ts: float | None = None,
    before_id: int | None = None,
) -> list[ThreatWithMessage]:
    """Threats with their messages, newest first (``before_id``: the next page)."""
    where = (
        Where()
        .equals("t.camera", camera)
        .equals("t.agent_id", agent_id)
        .equals("t.rule", rule)
        .at_least("t.captured_ts", since_ts)
        .below("t.captured_ts", until_ts)
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
    # SQLite's CAST truncates, PostgreSQL's rounds: FLOOR there (capture times are positive)
    hour = (
        "CAST(FLOOR(captured_ts / 3600) AS BIGINT)"
        if is_postgres(conn)
        else ("CAST(captured_ts / 3600 AS INTEGER)")
    )
    rows = conn.execute(
        f"SELECT {hour} * 3600 AS hour, camera, COUNT(*) "
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
