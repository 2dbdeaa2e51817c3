from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from aggregator import store
from aggregator.api import paging
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import MAX_ID, BeforeId, Db, Limit, NotificationId, dt
from aggregator.api.schemas import (
    NotificationAttemptPublic,
    NotificationDetail,
    NotificationPublic,
)
from aggregator.store.models import NotificationRow

router = APIRouter(tags=["notifications"], dependencies=[VIEWER], responses=AUTH_RESPONSES)


def notification_fields(n: NotificationRow) -> dict[str, Any]:
    return {
        "id": n.id,
        "event_id": n.event_id,
        "notifier": n.notifier,
        "channel": n.channel,
        "kind": n.kind,
        "state_key": n.state_key,
        "state": n.state,
        "created_at": dt(n.created_ts),
        "next_attempt_at": dt(n.next_attempt_ts),
        "sent_at": dt(n.sent_ts),
        "attempts": n.attempts,
        "content_sha256": n.content_sha256,
        "code_version": n.code_version,
        "last_error": n.last_error,
    }


@router.get(
    "/api/notifications",
    response_model=list[NotificationPublic],
    summary="Notifications of threat events, newest first, a page at a time (keyset: the next "
    'page\'s cursor comes in the Link rel="next" and X-Next-Cursor headers)',
)
def list_notifications(
    request: Request,
    response: Response,
    conn: Db,
    limit: Limit,
    event_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    notifier: str | None = None,
    state: Annotated[str | None, Query(pattern="^(pending|sent|failed|suppressed)$")] = None,
    before_id: BeforeId = None,
    cursor: paging.IdCursor = None,
) -> list[NotificationPublic]:
    before_id = paging.below_id(cursor, before_id)
    found = store.notifications.list_notifications(
        conn, limit=limit, event_id=event_id, notifier=notifier, state=state, before_id=before_id
    )
    if len(found) == limit:
        paging.link_next(request, response, paging.id_cursor(found[-1].id))
    return [NotificationPublic(**notification_fields(n)) for n in found]


@router.get(
    "/api/notifications/{notification_id}",
    response_model=NotificationDetail,
    summary="One notification with what it sent and every delivery attempt",
    responses={404: {"description": "no such notification"}},
)
def get_notification(conn: Db, notification_id: NotificationId) -> NotificationDetail:
    n = store.notifications.get(conn, notification_id)
    if n is None:
        raise HTTPException(404, f"notification {notification_id} not found")
    attempts = [
        NotificationAttemptPublic(
            attempt=a.attempt,
            started_at=dt(a.started_ts),
            finished_at=dt(a.finished_ts),
            outcome=a.outcome,
            error=a.error,
        )
        for a in store.notifications.attempts_of(conn, notification_id)
    ]
    content = json.loads(n.content_json) if n.content_json else None
    return NotificationDetail(**notification_fields(n), content=content, attempt_log=attempts)
