"""Threat events (table ``events``). When events start, grow and end is decided in
:mod:`aggregator.events`; this module reads and writes the rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store import counters
from aggregator.store.backend import is_postgres
from aggregator.store.models import EventRow, NewEvent, OpenEventClock
from aggregator.store.schema import Connection
from aggregator.store.where import Where

_COLUMNS = (
    "id, agent_id, camera, rule, label, severity, started_ts, last_seen_ts, ended_ts, "
    "threat_count, top_score, top_message_id, group_key, cameras, cutoff_s"
)


def _event(row: Sequence[Any]) -> EventRow:
    return EventRow(
        id=row[0],
        agent_id=row[1],
        camera=row[2],
        rule=row[3],
        label=row[4],
        severity=row[5],
        started_ts=row[6],
        last_seen_ts=row[7],
        ended_ts=row[8],
        threat_count=row[9],
        top_score=row[10],
        top_message_id=row[11],
        group_key=row[12],
        cameras=json.loads(row[13] or "[]") or [row[2]],
        cutoff_s=row[14],
    )


def get(conn: Connection, event_id: int) -> EventRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else _event(row)


def open_of(
    conn: Connection, *, agent_ids: Iterable[str], group_keys: Iterable[str]
) -> list[EventRow]:
    """The open events of these agents and of these group keys, by id."""
    agents, keys = sorted(set(agent_ids)), sorted(set(group_keys))
    # An empty list leaves its test out: PostgreSQL has no empty IN () (SQLite's is false).
    tests = [
        f"{column} IN ({', '.join('?' * len(values))})"
        for column, values in (("agent_id", agents), ("group_key", keys))
        if values
    ]
    if not tests:
        return []
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE ended_ts IS NULL AND ({' OR '.join(tests)}) "
        "ORDER BY id",
        (*agents, *keys),
    )
    return [_event(r) for r in rows]


def save_many(conn: Connection, events: Sequence[EventRow]) -> None:
    """Write the span, count, severity, top score, top message, label and cameras of these
    events as they stand (grown in memory by a batch of threats)."""
    conn.executemany(
        "UPDATE events SET started_ts = ?, last_seen_ts = ?, threat_count = ?, severity = ?, "
        "top_score = ?, top_message_id = ?, label = ?, cameras = ? WHERE id = ?",
        [
            (
                e.started_ts,
                e.last_seen_ts,
                e.threat_count,
                e.severity,
                e.top_score,
                e.top_message_id,
                e.label,
                json.dumps(e.cameras),
                e.id,
            )
            for e in events
        ],
    )


def create(conn: Connection, event: NewEvent) -> int:
    """Start an event with its first threat; returns its id."""
    (event_id,) = conn.execute(
        "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, "
        "last_seen_ts, threat_count, top_score, top_message_id, group_key, cameras, "
        "cutoff_s) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?) RETURNING id",
        (
            event.agent_id,
            event.camera,
            event.rule,
            event.label,
            event.severity,
            event.captured_ts,
            event.captured_ts,
            event.score,
            event.message_id,
            event.group_key,
            json.dumps([event.camera]),
            event.cutoff_s,
        ),
    ).fetchone()
    if is_postgres(conn):  # the batches run side by side there: rows of its own (.counters)
        counters.add_rows(conn, {"events": 1, "open_events": 1})
    else:
        conn.execute(
            "UPDATE row_counts SET value = value + 1 WHERE name IN ('events', 'open_events')"
        )
    return int(event_id)


def rules_of_agent(conn: Connection, agent_id: str) -> list[str]:
    """The distinct rules of this agent's events."""
    rows = conn.execute("SELECT DISTINCT rule FROM events WHERE agent_id = ?", (agent_id,))
    return [str(r[0]) for r in rows]


def open_with_clocks(conn: Connection) -> list[OpenEventClock]:
    """Every open event with the clock of its agent and when it was last heard from."""
    rows = conn.execute(
        "SELECT e.id, e.agent_id, e.last_seen_ts, e.cutoff_s, a.clock_ts, a.last_seen_ts "
        "FROM events e LEFT JOIN agents a ON a.agent_id = e.agent_id "
        "WHERE e.ended_ts IS NULL ORDER BY e.id"
    )
    return [OpenEventClock(*r) for r in rows]


def end(conn: Connection, event_ids: Sequence[int]) -> None:
    """End these open events at their last threat."""
    if not event_ids:
        return
    marks = ", ".join("?" * len(event_ids))
    cur = conn.execute(
        f"UPDATE events SET ended_ts = last_seen_ts WHERE id IN ({marks}) AND ended_ts IS NULL",
        list(event_ids),
    )
    if is_postgres(conn):
        counters.add_rows(conn, {"open_events": -cur.rowcount})
    else:
        conn.execute(
            "UPDATE row_counts SET value = value - ? WHERE name = 'open_events'", (cur.rowcount,)
        )


def list_events(
    conn: Connection,
    *,
    limit: int,
    camera: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    since_ts: float | None = None,
    state: str | None = None,
    before_id: int | None = None,
    after_id: int | None = None,
    until_ts: float | None = None,
    severity: str | None = None,
    label: str | None = None,
    cameras: Sequence[str] | None = None,
    reviewed: bool | None = None,
) -> list[EventRow]:
    """Events, newest first; ``since_ts``/``until_ts`` filter on the last threat, ``before_id``
    pages back, ``after_id`` asks for what is newer (the page's live updates); ``cameras``: any
    of these (a site)."""
    where = (
        Where()
        .equals("camera", camera)
        .equals("agent_id", agent_id)
        .equals("rule", rule)
        .equals("severity", severity)
        .equals("label", label)
        .at_least("last_seen_ts", since_ts)
        .below("started_ts", until_ts)
        .holds("ended_ts IS NULL", state == "open")
        .holds("ended_ts IS NOT NULL", state == "ended")
        .holds("reviewed_ts IS NOT NULL", reviewed is True)
        .holds("reviewed_ts IS NULL", reviewed is False)
        .below("id", before_id)
    )
    if after_id is not None:
        where.clauses.append("id > ?")
        where.args.append(after_id)
    if cameras is not None:
        where.clauses.append(f"camera IN ({', '.join('?' * len(cameras))})" if cameras else "1 = 0")
        where.args.extend(cameras)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events{where.sql} ORDER BY id DESC LIMIT ?", [*where.args, limit]
    )
    return [_event(r) for r in rows]


def started_between(
    conn: Connection,
    *,
    since_ts: float | None = None,
    until_ts: float | None = None,
    camera: str | None = None,
    agent_id: str | None = None,
) -> list[EventRow]:
    """Events that started in a capture-time range, oldest first (plots)."""
    where = (
        Where()
        .at_least("started_ts", since_ts)
        .below("started_ts", until_ts)
        .equals("camera", camera)
        .equals("agent_id", agent_id)
    )
    rows = conn.execute(f"SELECT {_COLUMNS} FROM events{where.sql} ORDER BY id", where.args)
    return [_event(r) for r in rows]


@dataclass(frozen=True)
class Review:
    """Who marked an event reviewed, and when."""

    event_id: int
    reviewed_by: str
    reviewed_ts: float


def mark_reviewed(
    conn: Connection, event_ids: Sequence[int], *, by: str | None, now_ts: float
) -> list[int]:
    """Mark events reviewed by ``by`` (None: unreviewed again); returns the ids that exist."""
    if not event_ids:
        return []
    marks = ", ".join("?" * len(event_ids))
    conn.execute(
        f"UPDATE events SET reviewed_by = ?, reviewed_ts = ? WHERE id IN ({marks})",
        [by, None if by is None else now_ts, *event_ids],
    )
    rows = conn.execute(f"SELECT id FROM events WHERE id IN ({marks}) ORDER BY id", list(event_ids))
    return [int(r[0]) for r in rows]


def reviews_of(conn: Connection, event_ids: Sequence[int]) -> dict[int, Review]:
    """The reviews of these events (the ones not reviewed are left out)."""
    if not event_ids:
        return {}
    rows = conn.execute(
        "SELECT id, reviewed_by, reviewed_ts FROM events WHERE reviewed_ts IS NOT NULL "
        f"AND id IN ({', '.join('?' * len(event_ids))})",
        list(event_ids),
    )
    return {int(r[0]): Review(int(r[0]), r[1], r[2]) for r in rows}


def distinct_values(conn: Connection, *, limit: int = 500) -> dict[str, list[str]]:
    """The cameras, labels, severities and agents that events have (the page's filters), at
    most ``limit`` each. A loose index scan (one seek per distinct value on the index that
    starts with the column: migration m015, ``events_key`` for agents), not a scan of every
    event."""
    found: dict[str, list[str]] = {}
    for column in ("camera", "label", "severity", "agent_id"):
        rows = conn.execute(
            f"WITH RECURSIVE v(x) AS (SELECT MIN({column}) FROM events UNION ALL "
            f"SELECT (SELECT MIN({column}) FROM events WHERE {column} > v.x) FROM v "
            "WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL LIMIT ?",
            (limit,),
        )
        found[column] = [str(r[0]) for r in rows]
    return found


def latest_id(conn: Connection) -> int:
    row = conn.execute("SELECT MAX(id) FROM events").fetchone()
    return int(row[0] or 0)


def camera_stats(conn: Connection) -> dict[tuple[str, str], tuple[int, int]]:
    """(agent, camera) -> (events so far, the latest event's id)."""
    rows = conn.execute("SELECT agent_id, camera, COUNT(*), MAX(id) FROM events GROUP BY 1, 2")
    return {(str(r[0]), str(r[1])): (int(r[2]), int(r[3])) for r in rows}


def change_token(conn: Connection) -> tuple[Any, ...]:
    """Changes when an event starts, grows or ends, or an agent's status changes: a cheap check
    before recomputing what depends on them."""
    events = conn.execute(
        "SELECT MAX(id), (SELECT COUNT(*) || ':' || COALESCE(SUM(threat_count), 0) || ':' || "
        "COALESCE(MAX(last_seen_ts), 0) FROM events WHERE ended_ts IS NULL) FROM events"
    ).fetchone()
    concat = "string_agg({}, ',')" if is_postgres(conn) else "group_concat({})"
    agents = conn.execute(
        "SELECT "
        + concat.format("agent_id || ':' || state || ':' || COALESCE(last_status_ts, 0)")
        + " FROM agents"
    ).fetchone()
    return (events[0], events[1], agents[0])
