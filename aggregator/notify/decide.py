"""Which notifications to send, decided inside the ingest writer's open transaction so that a
decision is durable with the threats that caused it. Sending happens later, on the sender
thread (:mod:`aggregator.notify.sender`).

Rules (per notifier):
- ``new`` event: one notification, due ``group_wait_s`` after the decision, unless the camera is
  cooling down (``cooldown_s`` after its last notified event) -- then a ``suppressed`` row
  records why nothing was sent.
- ``update`` (the severity rose): one notification per severity reached, unless the event's
  ``new`` notification has not been rendered yet (it will carry the higher severity) or the
  event was suppressed.
- ``repeat``: while an event stays open, one more every ``repeat_interval_s`` after the last
  one, once that one is no longer pending (repeats do not pile up while a server is down).

The UNIQUE (event_id, notifier, kind, state_key) constraint makes a second notification for the
same event state impossible, whatever path tries to decide it again.
"""

from __future__ import annotations

import logging
import sqlite3

from aggregator.config import AggregatorConfig, SmtpNotifier, WebhookNotifier
from aggregator.events import EventChange
from appcommon.version import code_version

log = logging.getLogger(__name__)


def _insert(
    conn: sqlite3.Connection,
    *,
    event_id: int,
    notifier: SmtpNotifier | WebhookNotifier,
    kind: str,
    state_key: str,
    state: str,
    now_ts: float,
    due_ts: float | None,
    reason: str | None = None,
) -> bool:
    cur = conn.execute(
        "INSERT INTO notifications (event_id, notifier, channel, kind, state_key, state, "
        "created_ts, next_attempt_ts, code_version, last_error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (event_id, notifier, kind, state_key) DO NOTHING",
        (
            event_id,
            notifier.name,
            notifier.type,
            kind,
            state_key,
            state,
            now_ts,
            due_ts,
            code_version(),
            reason,
        ),
    )
    if cur.rowcount == 1:
        log.info(
            "event=%d notification %s/%s for %s: %s",
            event_id,
            notifier.name,
            kind,
            state_key,
            state,
        )
    return cur.rowcount == 1


def _cooling_down(
    conn: sqlite3.Connection, *, event: sqlite3.Row, notifier: str, cooldown_s: float
) -> bool:
    """Another event of this camera, notified on this notifier, was seen within cooldown_s
    before this one started (capture time)."""
    if cooldown_s <= 0:
        return False
    row = conn.execute(
        "SELECT 1 FROM events p JOIN notifications n ON n.event_id = p.id "
        "WHERE p.camera = ? AND p.id != ? AND n.notifier = ? AND n.kind = 'new' "
        "AND n.state != 'suppressed' AND p.started_ts <= ? AND p.last_seen_ts >= ? LIMIT 1",
        (
            event["camera"],
            event["id"],
            notifier,
            event["started_ts"],
            event["started_ts"] - cooldown_s,
        ),
    ).fetchone()
    return row is not None


def on_changes(
    conn: sqlite3.Connection, changes: list[EventChange], config: AggregatorConfig, *, now_ts: float
) -> int:
    """Decide the notifications of these event changes; return how many became due."""
    if not config.notify.notifiers:
        return 0
    decided = 0
    for change in changes:
        if change.type == "end":
            continue
        event = conn.execute("SELECT * FROM events WHERE id = ?", (change.event_id,)).fetchone()
        for notifier in config.notify.notifiers:
            if change.type == "new":
                cool = _cooling_down(
                    conn, event=event, notifier=notifier.name, cooldown_s=config.notify.cooldown_s
                )
                decided += (
                    _insert(
                        conn,
                        event_id=event["id"],
                        notifier=notifier,
                        kind="new",
                        state_key="new",
                        state="suppressed" if cool else "pending",
                        now_ts=now_ts,
                        due_ts=None if cool else now_ts + config.notify.group_wait_s,
                        reason=f"camera {event['camera']} cooling down" if cool else None,
                    )
                    and not cool
                )
                continue
            first = conn.execute(
                "SELECT state, content_json FROM notifications "
                "WHERE event_id = ? AND notifier = ? AND kind = 'new'",
                (event["id"], notifier.name),
            ).fetchone()
            if first is None or first["state"] == "suppressed":
                continue
            if first["state"] == "pending" and first["content_json"] is None:
                continue  # not rendered yet: the first notification carries the new severity
            decided += _insert(
                conn,
                event_id=event["id"],
                notifier=notifier,
                kind="update",
                state_key=f"severity:{event['severity']}",
                state="pending",
                now_ts=now_ts,
                due_ts=now_ts,
            )
    return decided


def schedule_repeats(conn: sqlite3.Connection, config: AggregatorConfig, *, now_ts: float) -> int:
    """One more notification for each open event whose last one is ``repeat_interval_s`` old
    and no longer pending."""
    interval = config.notify.repeat_interval_s
    names = {n.name: n for n in config.notify.notifiers}
    if interval is None or not names:
        return 0
    rows = conn.execute(
        "SELECT n.event_id, n.notifier, MAX(n.created_ts) AS last_ts, "
        "SUM(n.kind = 'repeat') AS repeats FROM notifications n "
        "JOIN events e ON e.id = n.event_id AND e.ended_ts IS NULL "
        "WHERE n.state != 'suppressed' GROUP BY n.event_id, n.notifier "
        "HAVING MAX(n.created_ts) <= ? AND SUM(n.state = 'pending') = 0",
        (now_ts - interval,),
    ).fetchall()
    decided = 0
    for row in rows:
        notifier = names.get(row["notifier"])
        if notifier is None:
            continue
        decided += _insert(
            conn,
            event_id=row["event_id"],
            notifier=notifier,
            kind="repeat",
            state_key=f"repeat:{row['repeats'] + 1}",
            state="pending",
            now_ts=now_ts,
            due_ts=now_ts,
        )
    return decided
