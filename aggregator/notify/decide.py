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

from aggregator import store
from aggregator.config import AggregatorConfig, SmtpNotifier, WebhookNotifier
from aggregator.events import EventChange
from aggregator.store.models import EventRow, NewNotification
from appcommon.version import code_version

log = logging.getLogger(__name__)


def _insert(
    conn: store.Connection,
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
    inserted = store.notifications.insert(
        conn,
        NewNotification(
            event_id=event_id,
            notifier=notifier.name,
            channel=notifier.type,
            kind=kind,
            state_key=state_key,
            state=state,
            created_ts=now_ts,
            next_attempt_ts=due_ts,
            code_version=code_version(),
            last_error=reason,
        ),
    )
    if inserted:
        log.info(
            "event=%d notification %s/%s for %s: %s",
            event_id,
            notifier.name,
            kind,
            state_key,
            state,
        )
    return inserted


def _cooling_down(
    conn: store.Connection, *, event: EventRow, notifier: str, cooldown_s: float
) -> bool:
    """Another event of this camera, notified on this notifier, was seen within cooldown_s
    before this one started (capture time)."""
    if cooldown_s <= 0:
        return False
    return store.notifications.camera_notified_within(
        conn,
        camera=event.camera,
        other_than_event=event.id,
        notifier=notifier,
        started_ts=event.started_ts,
        window_s=cooldown_s,
    )


def on_changes(
    conn: store.Connection, changes: list[EventChange], config: AggregatorConfig, *, now_ts: float
) -> int:
    """Decide the notifications of these event changes; return how many became due."""
    if not config.notify.notifiers:
        return 0
    decided = 0
    for change in changes:
        if change.type == "end":
            continue
        event = store.events.get(conn, change.event_id)
        if event is None:
            continue
        for notifier in config.notify.notifiers:
            if change.type == "new":
                cool = _cooling_down(
                    conn, event=event, notifier=notifier.name, cooldown_s=config.notify.cooldown_s
                )
                decided += (
                    _insert(
                        conn,
                        event_id=event.id,
                        notifier=notifier,
                        kind="new",
                        state_key="new",
                        state="suppressed" if cool else "pending",
                        now_ts=now_ts,
                        due_ts=None if cool else now_ts + config.notify.group_wait_s,
                        reason=f"camera {event.camera} cooling down" if cool else None,
                    )
                    and not cool
                )
                continue
            first = store.notifications.first_of(conn, event_id=event.id, notifier=notifier.name)
            if first is None or first.state == "suppressed":
                continue
            if first.state == "pending" and first.content_json is None:
                continue  # not rendered yet: the first notification carries the new severity
            decided += _insert(
                conn,
                event_id=event.id,
                notifier=notifier,
                kind="update",
                state_key=f"severity:{event.severity}",
                state="pending",
                now_ts=now_ts,
                due_ts=now_ts,
            )
    return decided


def schedule_repeats(conn: store.Connection, config: AggregatorConfig, *, now_ts: float) -> int:
    """One more notification for each open event whose last one is ``repeat_interval_s`` old
    and no longer pending."""
    interval = config.notify.repeat_interval_s
    names = {n.name: n for n in config.notify.notifiers}
    if interval is None or not names:
        return 0
    decided = 0
    for due in store.notifications.repeats_due(conn, last_before_ts=now_ts - interval):
        notifier = names.get(due.notifier)
        if notifier is None:
            continue
        decided += _insert(
            conn,
            event_id=due.event_id,
            notifier=notifier,
            kind="repeat",
            state_key=f"repeat:{due.repeats + 1}",
            state="pending",
            now_ts=now_ts,
            due_ts=now_ts,
        )
    return decided
