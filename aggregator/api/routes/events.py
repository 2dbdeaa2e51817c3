from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response

from aggregator import store
from aggregator.api.deps import BeforeId, Db, EventId, JsonList, Limit, Settings, dt, epoch
from aggregator.api.routes.threats import threat_public
from aggregator.api.schemas import EventDetail, EventPublic
from aggregator.snapshots import snapshot_path
from aggregator.store.models import EventRow

router = APIRouter(tags=["events"])
EVENTS = JsonList(EventPublic)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
"""Images are served as what they are: a browser never guesses another type from the bytes."""


def event_fields(event: EventRow) -> dict[str, Any]:
    return {
        "id": event.id,
        "agent_id": event.agent_id,
        "camera": event.camera,
        "rule": event.rule,
        "label": event.label,
        "severity": event.severity,
        "state": event.state,
        "started_at": dt(event.started_ts),
        "last_seen_at": dt(event.last_seen_ts),
        "ended_at": dt(event.ended_ts),
        "threat_count": event.threat_count,
        "top_score": event.top_score,
        "cameras": event.cameras,
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
    before_id: BeforeId = None,
) -> Response:
    found = store.events.list_events(
        conn,
        limit=limit,
        camera=camera,
        agent_id=agent_id,
        rule=rule,
        since_ts=epoch(since),
        state=state,
        before_id=before_id,
    )
    return EVENTS.response([EventPublic(**event_fields(e)) for e in found])


@router.get(
    "/api/events/{event_id}",
    response_model=EventDetail,
    summary="One threat event with all its threats and their provenance",
    responses={404: {"description": "no such event"}},
)
def get_event(conn: Db, event_id: EventId) -> EventDetail:
    event = store.events.get(conn, event_id)
    if event is None:
        raise HTTPException(404, f"event {event_id} not found")
    threats = [threat_public(t) for t in store.messages.threats_of_event(conn, event_id)]
    return EventDetail(**event_fields(event), threats=threats)


@router.get(
    "/api/events/{event_id}/snapshot.jpg",
    response_class=FileResponse,
    summary="The snapshot of the event's highest-scoring threat (JPEG, stored by sha256)",
    responses={
        404: {"description": "no such event, or its threat came without a snapshot"},
        410: {"description": "the snapshot was deleted by retention"},
    },
)
def get_event_snapshot(conn: Db, settings: Settings, event_id: EventId) -> FileResponse:
    event = store.events.get(conn, event_id)
    if event is None:
        raise HTTPException(404, f"event {event_id} not found")
    sha = store.messages.snapshot_sha256(conn, event.top_message_id)
    if sha is None:
        raise HTTPException(404, f"event {event_id}: its top threat came without a snapshot")
    path = snapshot_path(settings.store.snapshots_dir, sha)
    if not path.is_file():
        raise HTTPException(410, f"event {event_id}: snapshot {sha} was deleted by retention")
    return FileResponse(
        path,
        media_type="image/jpeg",
        headers={"X-Snapshot-SHA256": sha, "ETag": f'"{sha}"', **NOSNIFF},
    )
