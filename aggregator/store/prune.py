"""Database retention: the oldest threat messages, their threats and the lineage they keep in
their row deleted in batches; their events stay with their summaries (:mod:`aggregator.retention`
decides when)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.store import counters
from aggregator.store.schema import Connection


@dataclass(frozen=True)
class Pruned:
    """What one batch deleted."""

    messages: int
    threats: int
    event_ids: list[int]
    snapshots: list[str]  # the sha256s of the deleted messages' snapshots


def oldest_messages(conn: Connection, *, before_ts: float, limit: int) -> list[str]:
    """Up to ``limit`` ids of messages captured before ``before_ts`` whose events have all
    ended, oldest first (an open event keeps its threats)."""
    rows = conn.execute(
        "SELECT m.message_id FROM messages m WHERE m.captured_ts < ? AND NOT EXISTS "
        "(SELECT 1 FROM threats t JOIN events e ON e.id = t.event_id "
        "WHERE t.message_id = m.message_id AND e.ended_ts IS NULL) "
        "ORDER BY m.captured_ts LIMIT ?",
        (before_ts, limit),
    )
    return [str(r[0]) for r in rows]


def delete_messages(conn: Connection, message_ids: Sequence[str], *, now_ts: float) -> Pruned:
    """Delete these messages and their threats; their events keep their summary, with the
    sha256 of their top threat's snapshot and when they were pruned."""
    marks = ",".join("?" * len(message_ids))
    ids = list(message_ids)
    event_ids = [
        int(r[0])
        for r in conn.execute(
            f"SELECT DISTINCT event_id FROM threats WHERE message_id IN ({marks}) ORDER BY 1", ids
        )
    ]
    shas = [
        str(r[0])
        for r in conn.execute(
            f"SELECT DISTINCT snapshot_sha256 FROM messages WHERE message_id IN ({marks}) "
            "AND snapshot_sha256 IS NOT NULL ORDER BY 1",
            ids,
        )
    ]
    if event_ids:
        emarks = ",".join("?" * len(event_ids))
        conn.execute(
            "UPDATE events SET best_snapshot_sha256 = COALESCE(best_snapshot_sha256, "
            "(SELECT m.snapshot_sha256 FROM messages m WHERE m.message_id = events.top_message_id)"
            f"), pruned_ts = ? WHERE id IN ({emarks})",
            (now_ts, *event_ids),
        )
    threats = conn.execute(f"DELETE FROM threats WHERE message_id IN ({marks})", ids).rowcount
    messages = conn.execute(f"DELETE FROM messages WHERE message_id IN ({marks})", ids).rowcount
    counters.add_rows(conn, {"messages": -messages, "threats": -threats})
    return Pruned(messages=messages, threats=threats, event_ids=event_ids, snapshots=shas)


def unreferenced(conn: Connection, shas: Sequence[str]) -> list[str]:
    """Those of ``shas`` that no message refers to and no event keeps as its best."""
    return [
        sha
        for sha in shas
        if conn.execute(
            "SELECT 1 FROM messages WHERE snapshot_sha256 = ? UNION ALL "
            "SELECT 1 FROM events WHERE best_snapshot_sha256 = ? LIMIT 1",
            (sha, sha),
        ).fetchone()
        is None
    ]


def pruned_at(conn: Connection, event_id: int) -> tuple[float | None, str | None]:
    """(when the event's threats were pruned, the sha256 of its best snapshot kept then)."""
    row = conn.execute(
        "SELECT pruned_ts, best_snapshot_sha256 FROM events WHERE id = ?", (event_id,)
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])
