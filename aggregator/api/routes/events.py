from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from aggregator import retention, store
from aggregator.api import paging
from aggregator.api.access import AUTH_RESPONSES, OPERATOR, VIEWER, Who
from aggregator.api.deps import (
    MAX_ID,
    BeforeId,
    Db,
    EventId,
    Limit,
    Settings,
    dt,
    epoch,
    json_response,
    quick_read,
    write_connection,
)
from aggregator.api.routes.threats import threat_fields
from aggregator.api.schemas import EventDetail, EventPublic
from aggregator.snapshots import snapshot_path
from aggregator.store.events import Review
from aggregator.store.models import EventRow

log = logging.getLogger(__name__)
router = APIRouter(tags=["events"], dependencies=[VIEWER], responses=AUTH_RESPONSES)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
"""Images are served as what they are: a browser never guesses another type from the bytes."""


def event_fields(event: EventRow, review: Review | None) -> dict[str, Any]:
    """An event as :class:`EventPublic`'s fields, in its order, ready for
    :func:`~aggregator.api.deps.json_response` (``tests/test_api_request_path.py`` compares the
    bytes with the model's)."""
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
        "reviewed_by": None if review is None else review.reviewed_by,
        "reviewed_at": None if review is None else dt(review.reviewed_ts),
    }


@router.get(
    "/api/events",
    response_model=list[EventPublic],
    summary="Threat events, newest first, a page at a time (keyset: the next page's cursor "
    'comes in the Link rel="next" and X-Next-Cursor headers)',
)
async def list_events(
    request: Request,
    conn: Db,
    settings: Settings,
    limit: Limit,
    camera: Annotated[str | None, Query(max_length=200)] = None,
    agent_id: Annotated[str | None, Query(max_length=200)] = None,
    rule: Annotated[str | None, Query(max_length=200)] = None,
    site: Annotated[
        str | None,
        Query(max_length=200, description="only the cameras of this site (events.sites)"),
    ] = None,
    severity: Annotated[str | None, Query(max_length=50)] = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="last seen at or after")] = None,
    until: Annotated[datetime | None, Query(description="started before")] = None,
    state: Annotated[str | None, Query(pattern="^(open|ended)$")] = None,
    reviewed: Annotated[
        bool | None, Query(description="only reviewed (true) or not (false)")
    ] = None,
    before_id: BeforeId = None,
    after_id: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="only events newer than this id (live updates)"),
    ] = None,
    cursor: paging.IdCursor = None,
) -> Response:
    before_id = paging.below_id(cursor, before_id)
    cameras = None
    if site is not None:
        cameras = sorted(c for c, s in settings.events.sites.items() if s == site)

    def page(conn: store.Connection) -> Response:
        found = store.events.list_events(
            conn,
            limit=limit,
            camera=camera,
            agent_id=agent_id,
            rule=rule,
            since_ts=epoch(since),
            until_ts=epoch(until),
            state=state,
            before_id=before_id,
            after_id=after_id,
            severity=severity,
            label=label,
            cameras=cameras,
            reviewed=reviewed,
        )
        reviews = store.events.reviews_of(conn, [e.id for e in found])
        response = json_response([event_fields(e, reviews.get(e.id)) for e in found])
        if len(found) == limit and after_id is None:
            paging.link_next(request, response, paging.id_cursor(found[-1].id))
        return response

    return await quick_read(conn, page)


@router.get(
    "/api/events/{event_id}",
    response_model=EventDetail,
    summary="One threat event with all its threats and their provenance",
    responses={404: {"description": "no such event"}},
)
async def get_event(conn: Db, event_id: EventId) -> Response:
    def detail(conn: store.Connection) -> Response:
        event = store.events.get(conn, event_id)
        if event is None:
            raise HTTPException(404, f"event {event_id} not found")
        threats = [threat_fields(t) for t in store.messages.threats_of_event(conn, event_id)]
        review = store.events.reviews_of(conn, [event_id]).get(event_id)
        return json_response({**event_fields(event, review), "threats": threats})

    return await quick_read(conn, detail)


@router.get(
    "/api/events/{event_id}/snapshot.jpg",
    response_class=FileResponse,
    summary="The snapshot of the event's highest-scoring threat (JPEG, stored by sha256)",
    responses={
        404: {"description": "no such event, or its threat came without a snapshot"},
        410: {"description": "the snapshot was deleted (by the event's policy or retention)"},
    },
)
def get_event_snapshot(conn: Db, settings: Settings, event_id: EventId) -> FileResponse:
    event = store.events.get(conn, event_id)
    if event is None:
        raise HTTPException(404, f"event {event_id} not found")
    sha = retention.event_best_snapshot(conn, event)
    if sha is None:
        raise HTTPException(404, f"event {event_id}: its top threat came without a snapshot")
    path = snapshot_path(settings.store.snapshots_dir, sha)
    if not path.is_file():
        raise HTTPException(410, f"event {event_id}: {sha}: {retention.gone_detail(conn, sha)}")
    return FileResponse(
        path,
        media_type="image/jpeg",
        headers={"X-Snapshot-SHA256": sha, "ETag": f'"{sha}"', **NOSNIFF},
    )


JSON_MAX_ID = 2**53
"""Ids in a JSON body: the largest integer every JSON reader keeps exactly."""


class ReviewRequest(BaseModel):
    event_ids: list[Annotated[int, Field(ge=1, le=JSON_MAX_ID)]] = Field(
        min_length=1, max_length=1000
    )
    reviewed: bool = Field(True, description="false: mark them not reviewed again")


class ReviewResult(BaseModel):
    event_ids: list[int] = Field(description="the events marked (ids that exist)")
    reviewed_by: str | None
    reviewed_at: datetime | None


@router.post(
    "/api/events/review",
    response_model=ReviewResult,
    summary="Mark events reviewed (or not), recording who and when",
    dependencies=[OPERATOR],
)
def review_events(settings: Settings, who: Who, body: ReviewRequest) -> ReviewResult:
    now = time.time()
    by = who.name if body.reviewed else None
    with write_connection(settings) as conn, store.transaction(conn):
        marked = store.events.mark_reviewed(conn, body.event_ids, by=by, now_ts=now)
    log.info("events %s marked %s by %s", marked, "reviewed" if by else "not reviewed", who.name)
    return ReviewResult(event_ids=marked, reviewed_by=by, reviewed_at=dt(now) if by else None)


@router.get(
    "/api/snapshots/{sha256}.jpg",
    response_class=FileResponse,
    summary="A stored snapshot by its sha256 (a threat's frame)",
    responses={
        404: {"description": "no stored message refers to this snapshot"},
        410: {"description": "the snapshot was deleted (by the event's policy or retention)"},
    },
)
def get_snapshot(
    conn: Db,
    settings: Settings,
    sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="the snapshot's sha256")],
) -> FileResponse:
    gone = retention.gone_reasons(conn, [sha256])
    if not gone and not store.messages.snapshot_referenced(conn, sha256):
        raise HTTPException(404, f"no snapshot {sha256}")
    path = snapshot_path(settings.store.snapshots_dir, sha256)
    if not path.is_file():
        raise HTTPException(410, f"{sha256}: {retention.reason_text(gone.get(sha256))}")
    return FileResponse(
        path,
        media_type="image/jpeg",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=86400", **NOSNIFF},
    )
