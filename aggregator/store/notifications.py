"""Notifications and their delivery attempts (tables ``notifications``,
``notification_attempts``). What to notify is decided in :mod:`aggregator.notify.decide`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aggregator.store.backend import greatest, is_postgres
from aggregator.store.models import AttemptRow, NewNotification, NotificationRow, RepeatDue
from aggregator.store.schema import Connection
from aggregator.store.where import Where

_COLUMNS = (
    "id, event_id, notifier, channel, kind, state_key, state, created_ts, next_attempt_ts, "
    "sent_ts, attempts, content_json, content_sha256, code_version, last_error"
)


def _notification(row: Sequence[Any]) -> NotificationRow:
    return NotificationRow(*row)


def insert(conn: Connection, n: NewNotification) -> bool:
    """Record a decision; False when this event state was decided before (UNIQUE (event_id,
    notifier, kind, state_key): never twice for the same event state)."""
    cur = conn.execute(
        "INSERT INTO notifications (event_id, notifier, channel, kind, state_key, state, "
        "created_ts, next_attempt_ts, code_version, last_error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (event_id, notifier, kind, state_key) DO NOTHING",
        (
            n.event_id,
            n.notifier,
            n.channel,
            n.kind,
            n.state_key,
            n.state,
            n.created_ts,
            n.next_attempt_ts,
            n.code_version,
            n.last_error,
        ),
    )
    return cur.rowcount == 1


def get(conn: Connection, notification_id: int) -> NotificationRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM notifications WHERE id = ?", (notification_id,)
    ).fetchone()
    return None if row is None else _notification(row)


def first_of(conn: Connection, *, event_id: int, notifier: str) -> NotificationRow | None:
    """The ``new`` notification of an event on a notifier."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM notifications "
        "WHERE event_id = ? AND notifier = ? AND kind = 'new'",
        (event_id, notifier),
    ).fetchone()
    return None if row is None else _notification(row)


def camera_notified_within(
    conn: Connection,
    *,
    camera: str,
    other_than_event: int,
    notifier: str,
    started_ts: float,
    window_s: float,
) -> bool:
    """Another event of this camera, notified (not suppressed) on this notifier, was seen within
    ``window_s`` before ``started_ts`` (capture time)."""
    row = conn.execute(
        "SELECT 1 FROM events p JOIN notifications n ON n.event_id = p.id "
        "WHERE p.camera = ? AND p.id != ? AND n.notifier = ? AND n.kind = 'new' "
        "AND n.state != 'suppressed' AND p.started_ts <= ? AND p.last_seen_ts >= ? LIMIT 1",
        (camera, other_than_event, notifier, started_ts, started_ts - window_s),
    ).fetchone()
    return row is not None


def repeats_due(conn: Connection, *, last_before_ts: float) -> list[RepeatDue]:
    """Open events whose latest notification on a notifier was created before
    ``last_before_ts`` and none of whose notifications there is still pending."""
    rows = conn.execute(
        "SELECT n.event_id, n.notifier, SUM(CASE WHEN n.kind = 'repeat' THEN 1 ELSE 0 END) "
        "FROM notifications n JOIN events e ON e.id = n.event_id AND e.ended_ts IS NULL "
        "WHERE n.state != 'suppressed' GROUP BY n.event_id, n.notifier "
        "HAVING MAX(n.created_ts) <= ? AND SUM(CASE WHEN n.state = 'pending' THEN 1 ELSE 0 END) "
        "= 0",
        (last_before_ts,),
    )
    return [RepeatDue(event_id=r[0], notifier=r[1], repeats=int(r[2])) for r in rows]


def next_due_ts(conn: Connection, *, notifiers: Sequence[str]) -> float | None:
    """When the earliest pending notification of these notifiers is due (one claimed by a
    sender: when its claim runs out)."""
    row = conn.execute(
        f"SELECT MIN({greatest(conn)}(next_attempt_ts, COALESCE(claimed_until, 0))) "
        "FROM notifications WHERE state = 'pending' "
        f"AND notifier IN ({','.join('?' * len(notifiers))})",
        list(notifiers),
    ).fetchone()
    return None if row[0] is None else float(row[0])


def claim_due(
    conn: Connection,
    *,
    now_ts: float,
    notifiers: Sequence[str],
    by: str,
    lease_s: float,
    limit: int,
) -> list[int]:
    """Claim up to ``limit`` pending notifications of these notifiers due by ``now_ts`` for
    ``by`` until ``now_ts + lease_s``, earliest first, and return their ids: those no other
    sender holds (never claimed, released, or its lease ran out: a sender that died). One
    statement, so two senders on one store never claim the same notification.

    SQLite runs one writer at a time, so its ``UPDATE ... WHERE id IN (SELECT ...)`` is
    atomic as it stands. On PostgreSQL (READ COMMITTED) two such statements could both read
    a notification as free; there the candidates are locked in a CTE with ``FOR UPDATE SKIP
    LOCKED``: a sender skips the rows another is claiming instead of waiting for them, and the
    lease is checked again on the locked row."""
    marks = ",".join("?" * len(notifiers))
    if is_postgres(conn):
        sql = (
            "WITH free AS (SELECT id FROM notifications WHERE state = 'pending' "
            f"AND next_attempt_ts <= ? AND notifier IN ({marks}) "
            "AND (claimed_until IS NULL OR claimed_until < ?) "
            "ORDER BY next_attempt_ts, id LIMIT ? FOR UPDATE SKIP LOCKED) "
            "UPDATE notifications n SET claimed_by = ?, claimed_until = ? FROM free "
            "WHERE n.id = free.id RETURNING n.id"
        )
        params: list[Any] = [now_ts, *notifiers, now_ts, limit, by, now_ts + lease_s]
    else:
        sql = (
            "UPDATE notifications SET claimed_by = ?, claimed_until = ? WHERE id IN ("
            f"SELECT id FROM notifications WHERE state = 'pending' AND next_attempt_ts <= ? "
            f"AND notifier IN ({marks}) "
            "AND (claimed_until IS NULL OR claimed_until < ?) "
            "ORDER BY next_attempt_ts, id LIMIT ?) RETURNING id"
        )
        params = [by, now_ts + lease_s, now_ts, *notifiers, now_ts, limit]
    rows = conn.execute(sql, params).fetchall()
    return sorted(int(r[0]) for r in rows)


def defer(conn: Connection, notification_id: int, *, until_ts: float, error: str) -> None:
    """Try it again at ``until_ts`` (any sender: the claim is released)."""
    conn.execute(
        "UPDATE notifications SET next_attempt_ts = ?, last_error = ?, claimed_by = NULL, "
        "claimed_until = NULL WHERE id = ?",
        (until_ts, error, notification_id),
    )


def set_content(
    conn: Connection, notification_id: int, *, content_json: str, content_sha256: str
) -> None:
    """What the notification says, rendered once at its first attempt."""
    conn.execute(
        "UPDATE notifications SET content_json = ?, content_sha256 = ? WHERE id = ?",
        (content_json, content_sha256, notification_id),
    )


def record_attempt(
    conn: Connection,
    attempt: AttemptRow,
    *,
    state: str,
    next_attempt_ts: float | None,
    sent_ts: float | None,
) -> None:
    """One delivery attempt, and the notification's state after it (its claim released)."""
    conn.execute(
        "INSERT INTO notification_attempts (notification_id, attempt, started_ts, "
        "finished_ts, outcome, error) VALUES (?, ?, ?, ?, ?, ?)",
        (
            attempt.notification_id,
            attempt.attempt,
            attempt.started_ts,
            attempt.finished_ts,
            attempt.outcome,
            attempt.error,
        ),
    )
    conn.execute(
        "UPDATE notifications SET state = ?, attempts = ?, next_attempt_ts = ?, "
        "sent_ts = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL WHERE id = ?",
        (state, attempt.attempt, next_attempt_ts, sent_ts, attempt.error, attempt.notification_id),
    )


def attempts_of(conn: Connection, notification_id: int) -> list[AttemptRow]:
    rows = conn.execute(
        "SELECT notification_id, attempt, started_ts, finished_ts, outcome, error "
        "FROM notification_attempts WHERE notification_id = ? ORDER BY attempt",
        (notification_id,),
    )
    return [AttemptRow(*r) for r in rows]


def list_notifications(
    conn: Connection,
    *,
    limit: int,
    event_id: int | None = None,
    notifier: str | None = None,
    state: str | None = None,
    before_id: int | None = None,
) -> list[NotificationRow]:
    """Notifications, newest first (``before_id``: the next page)."""
    where = (
        Where()
        .equals("event_id", event_id)
        .equals("notifier", notifier)
        .equals("state", state)
        .below("id", before_id)
    )
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM notifications{where.sql} ORDER BY id DESC LIMIT ?",
        [*where.args, limit],
    )
    return [_notification(r) for r in rows]


def count_by_state(conn: Connection) -> dict[str, int]:
    """Notifications by state (pending, sent, failed, suppressed)."""
    rows = conn.execute("SELECT state, COUNT(*) FROM notifications GROUP BY state")
    return {str(r[0]): int(r[1]) for r in rows}
