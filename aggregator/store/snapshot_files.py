"""Which snapshot files an ended event keeps, which are to be deleted and why (tables
``snapshots_kept``, ``snapshot_deletions``, ``snapshots_deleted``; :mod:`aggregator.retention`
decides, this module reads and writes the rows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aggregator.store.schema import Connection


@dataclass(frozen=True)
class EventFrame:
    """One threat message of an event: its snapshot, capture time and best score in the event."""

    message_id: str
    snapshot_sha256: str | None
    captured_ts: float
    score: float


def frames_of_event(conn: Connection, event_id: int) -> list[EventFrame]:
    """The event's threat messages in capture order."""
    rows = conn.execute(
        "SELECT m.message_id, m.snapshot_sha256, m.captured_ts, MAX(t.score) FROM threats t "
        "JOIN messages m ON m.message_id = t.message_id WHERE t.event_id = ? "
        "GROUP BY m.message_id ORDER BY m.captured_ts, m.message_id",
        (event_id,),
    )
    return [EventFrame(str(r[0]), r[1], float(r[2]), float(r[3])) for r in rows]


def keep(conn: Connection, event_id: int, kept: Iterable[tuple[str, str]]) -> None:
    """Record the (sha256, role) snapshots an ended event keeps."""
    conn.executemany(
        "INSERT INTO snapshots_kept (sha256, event_id, role) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [(sha, event_id, role) for sha, role in kept],
    )


def kept_by_event(conn: Connection, event_id: int) -> dict[str, list[str]]:
    """sha256 -> the roles it has in the event's kept set (empty: no policy applied)."""
    out: dict[str, list[str]] = {}
    for sha, role in conn.execute(
        "SELECT sha256, role FROM snapshots_kept WHERE event_id = ? ORDER BY role", (event_id,)
    ):
        out.setdefault(str(sha), []).append(str(role))
    return out


def protected(conn: Connection, sha256: str, *, ending: Sequence[int]) -> bool:
    """Must this snapshot stay? Yes when an event's policy kept it, or when a message with it
    belongs to an event other than ``ending`` that is open or had no policy applied (ended
    before, or under ``keep: all``)."""
    if conn.execute("SELECT 1 FROM snapshots_kept WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
        return True
    # no IN () on PostgreSQL, and NOT IN (NULL) is never true: leave the test out when empty
    others = f"AND t.event_id NOT IN ({','.join('?' * len(ending))}) " if ending else ""
    row = conn.execute(
        "SELECT 1 FROM messages m JOIN threats t ON t.message_id = m.message_id "
        f"WHERE m.snapshot_sha256 = ? {others}AND NOT EXISTS "
        "(SELECT 1 FROM snapshots_kept k WHERE k.event_id = t.event_id) LIMIT 1",
        (sha256, *ending),
    ).fetchone()
    return row is not None


def in_open_event(conn: Connection, sha256: str) -> bool:
    """Does a message with this snapshot belong to an event that has not ended?"""
    row = conn.execute(
        "SELECT 1 FROM messages m JOIN threats t ON t.message_id = m.message_id "
        "JOIN events e ON e.id = t.event_id WHERE m.snapshot_sha256 = ? AND e.ended_ts IS NULL "
        "LIMIT 1",
        (sha256,),
    ).fetchone()
    return row is not None


def is_event_best(conn: Connection, sha256: str) -> bool:
    """Is this snapshot an event's best (its top threat's)?"""
    row = conn.execute(
        "SELECT 1 FROM snapshots_kept WHERE sha256 = ? AND role = 'top' UNION ALL "
        "SELECT 1 FROM events WHERE best_snapshot_sha256 = ? UNION ALL "
        "SELECT 1 FROM messages m WHERE m.snapshot_sha256 = ? AND EXISTS "
        "(SELECT 1 FROM events e WHERE e.top_message_id = m.message_id) LIMIT 1",
        (sha256, sha256, sha256),
    ).fetchone()
    return row is not None


def last_captured(conn: Connection, shas: Sequence[str]) -> dict[str, float]:
    """sha256 -> the capture time of the newest message that refers to it (absent: none)."""
    out: dict[str, float] = {}
    for i in range(0, len(shas), 500):
        part = list(shas[i : i + 500])
        marks = ",".join("?" * len(part))
        for sha, ts in conn.execute(
            "SELECT snapshot_sha256, MAX(captured_ts) FROM messages "
            f"WHERE snapshot_sha256 IN ({marks}) GROUP BY snapshot_sha256",
            part,
        ):
            out[str(sha)] = float(ts)
    return out


def decide(conn: Connection, deletions: Iterable[tuple[str, str]], *, now_ts: float) -> int:
    """Queue (sha256, reason) files for deletion and record why; returns how many."""
    rows = list(deletions)
    conn.executemany(
        "INSERT INTO snapshot_deletions (sha256, reason) VALUES (?, ?) "
        "ON CONFLICT (sha256) DO UPDATE SET reason = excluded.reason",
        rows,
    )
    conn.executemany(
        "INSERT INTO snapshots_deleted (sha256, reason, deleted_ts) VALUES (?, ?, ?) "
        "ON CONFLICT (sha256) DO UPDATE SET reason = excluded.reason, "
        "deleted_ts = excluded.deleted_ts",
        [(sha, reason, now_ts) for sha, reason in rows],
    )
    return len(rows)


def pending(conn: Connection) -> list[tuple[str, str]]:
    """The (sha256, reason) files a committed transaction decided to delete, not yet gone."""
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute("SELECT sha256, reason FROM snapshot_deletions ORDER BY sha256")
    ]


def done(conn: Connection, shas: Sequence[str]) -> None:
    """These files are gone."""
    conn.executemany("DELETE FROM snapshot_deletions WHERE sha256 = ?", [(s,) for s in shas])


def written_again(conn: Connection, shas: Sequence[str]) -> None:
    """Files written again for these sha256s (a later message came with the same bytes)."""
    if shas:
        conn.executemany("DELETE FROM snapshots_deleted WHERE sha256 = ?", [(s,) for s in shas])


def deleted_reasons(conn: Connection, shas: Sequence[str]) -> dict[str, str]:
    """sha256 -> why its file was deleted, for those that were."""
    out: dict[str, str] = {}
    unique = sorted(set(shas))
    for i in range(0, len(unique), 500):
        part = unique[i : i + 500]
        marks = ",".join("?" * len(part))
        for sha, reason in conn.execute(
            f"SELECT sha256, reason FROM snapshots_deleted WHERE sha256 IN ({marks})", part
        ):
            out[str(sha)] = str(reason)
    return out
