from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from aggregator.api.deps import Db, Limit, Settings, dt, filters, where_sql
from aggregator.api.routes.threats import THREAT_SQL, threat_public
from aggregator.api.schemas import EventDetail, EventPublic
from aggregator.snapshots import snapshot_path

router = APIRouter(tags=["events"])


def event_fields(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "agent_id": row["agent_id"],
        "camera": row["camera"],
        "rule": row["rule"],
        "label": row["label"],
        "severity": row["severity"],
        "state": "open" if row["ended_ts"] is None else "ended",
        "started_at": dt(row["started_ts"]),
        "last_seen_at": dt(row["last_seen_ts"]),
        "ended_at": dt(row["ended_ts"]),
        "threat_count": row["threat_count"],
        "top_score": row["top_score"],
        "cameras": json.loads(row["cameras"] or "[]") or [row["camera"]],
    }


@router.get("/api/events", response_model=list[EventPublic], summary="Threat events, newest first")
def list_events(
    conn: Db,
    limit: Limit,
    camera: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    since: Annotated[datetime | None, Query(description="last seen at or after")] = None,
    state: Annotated[str | None, Query(pattern="^(open|ended)$")] = None,
) -> list[EventPublic]:
    where, args = filters(
        camera=camera, agent_id=agent_id, rule=rule, since=since, alias="e", ts="last_seen_ts"
    )
    if state == "open":
        where.append("e.ended_ts IS NULL")
    elif state == "ended":
        where.append("e.ended_ts IS NOT NULL")
    sql = "SELECT e.* FROM events e" + where_sql(where) + " ORDER BY e.id DESC LIMIT ?"
    return [EventPublic(**event_fields(r)) for r in conn.execute(sql, [*args, limit])]


@router.get(
    "/api/events/{event_id}",
    response_model=EventDetail,
    summary="One threat event with all its threats and their provenance",
    responses={404: {"description": "no such event"}},
)
def get_event(conn: Db, event_id: int) -> EventDetail:
    row = conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"event {event_id} not found")
    threats = [
        threat_public(r)
        for r in conn.execute(
            THREAT_SQL + " WHERE t.event_id = ? ORDER BY t.captured_ts, t.id", (event_id,)
        )
    ]
    return EventDetail(**event_fields(row), threats=threats)


@router.get(
    "/api/events/{event_id}/snapshot.jpg",
    response_class=FileResponse,
    summary="The snapshot of the event's highest-scoring threat (JPEG, stored by sha256)",
    responses={
        404: {"description": "no such event, or its threat came without a snapshot"},
        410: {"description": "the snapshot was deleted by retention"},
    },
)
def get_event_snapshot(conn: Db, settings: Settings, event_id: int) -> FileResponse:
    row = conn.execute(
        "SELECT m.snapshot_sha256 FROM events e JOIN messages m ON m.message_id = e.top_message_id "
        "WHERE e.id = ?",
        (event_id,),
    ).fetchone()
    if row is None:
        raise HTTPException(404, f"event {event_id} not found")
    sha = row["snapshot_sha256"]
    if sha is None:
        raise HTTPException(404, f"event {event_id}: its top threat came without a snapshot")
    path = snapshot_path(settings.store.snapshots_dir, sha)
    if not path.is_file():
        raise HTTPException(410, f"event {event_id}: snapshot {sha} was deleted by retention")
    return FileResponse(
        path, media_type="image/jpeg", headers={"X-Snapshot-SHA256": sha, "ETag": f'"{sha}"'}
    )
