"""Signed, expiring links (no login): the snapshot a webhook notification points to."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from aggregator import retention, store
from aggregator.api.deps import Db, EventId, Settings
from aggregator.api.routes.events import NOSNIFF
from aggregator.auth import links
from aggregator.snapshots import snapshot_path

log = logging.getLogger(__name__)
router = APIRouter(tags=["links"])


@router.get(
    "/api/links/events/{event_id}/snapshot.jpg",
    response_class=FileResponse,
    summary="An event's best snapshot by a signed link (in webhook notifications): no login, "
    "until the link expires",
    responses={
        401: {"description": "no signature, a wrong one, or an expired link"},
        404: {"description": "no such event, or no snapshot"},
        410: {"description": "the snapshot was deleted (by the event's policy or retention)"},
    },
)
def signed_snapshot(
    conn: Db,
    settings: Settings,
    event_id: EventId,
    exp: Annotated[int | None, Query(ge=0, le=2**40, description="expiry, epoch seconds")] = None,
    sig: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description="HMAC-SHA256")] = None,
) -> FileResponse:
    if (
        exp is None
        or sig is None
        or not links.valid(
            store.access.link_key(conn), event_id, expires_ts=exp, sig=sig, now_ts=time.time()
        )
    ):
        log.warning("refused a snapshot link of event=%d: bad signature or expired", event_id)
        raise HTTPException(401, "the link's signature is wrong, or the link has expired")
    event = store.events.get(conn, event_id)
    sha = None if event is None else retention.event_best_snapshot(conn, event)
    if sha is None:
        raise HTTPException(404, f"event {event_id}: no snapshot")
    path = snapshot_path(settings.store.snapshots_dir, sha)
    if not path.is_file():
        raise HTTPException(410, f"event {event_id}: {retention.gone_detail(conn, sha)}")
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private", **NOSNIFF}
    )
