from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from aggregator.api.deps import Db, Limit, dt, where_sql
from aggregator.api.schemas import (
    NotificationAttemptPublic,
    NotificationDetail,
    NotificationPublic,
)

router = APIRouter(tags=["notifications"])


def notification_fields(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "notifier": row["notifier"],
        "channel": row["channel"],
        "kind": row["kind"],
        "state_key": row["state_key"],
        "state": row["state"],
        "created_at": dt(row["created_ts"]),
        "next_attempt_at": dt(row["next_attempt_ts"]),
        "sent_at": dt(row["sent_ts"]),
        "attempts": row["attempts"],
        "content_sha256": row["content_sha256"],
        "code_version": row["code_version"],
        "last_error": row["last_error"],
    }


@router.get(
    "/api/notifications",
    response_model=list[NotificationPublic],
    summary="Notifications of threat events, newest first",
)
def list_notifications(
    conn: Db,
    limit: Limit,
    event_id: int | None = None,
    notifier: str | None = None,
    state: Annotated[str | None, Query(pattern="^(pending|sent|failed|suppressed)$")] = None,
) -> list[NotificationPublic]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("event_id", event_id), ("notifier", notifier), ("state", state)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = "SELECT * FROM notifications" + where_sql(where) + " ORDER BY id DESC LIMIT ?"
    return [NotificationPublic(**notification_fields(r)) for r in conn.execute(sql, [*args, limit])]


@router.get(
    "/api/notifications/{notification_id}",
    response_model=NotificationDetail,
    summary="One notification with what it sent and every delivery attempt",
    responses={404: {"description": "no such notification"}},
)
def get_notification(conn: Db, notification_id: int) -> NotificationDetail:
    row = conn.execute("SELECT * FROM notifications WHERE id = ?", (notification_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"notification {notification_id} not found")
    attempts = [
        NotificationAttemptPublic(
            attempt=a["attempt"],
            started_at=datetime.fromtimestamp(a["started_ts"], UTC),
            finished_at=datetime.fromtimestamp(a["finished_ts"], UTC),
            outcome=a["outcome"],
            error=a["error"],
        )
        for a in conn.execute(
            "SELECT * FROM notification_attempts WHERE notification_id = ? ORDER BY attempt",
            (notification_id,),
        )
    ]
    content = json.loads(row["content_json"]) if row["content_json"] else None
    return NotificationDetail(**notification_fields(row), content=content, attempt_log=attempts)
