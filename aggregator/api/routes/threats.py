from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from aggregator import store
from aggregator.api import paging
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import BeforeId, Db, Limit, dt, epoch, json_response, quick_read
from aggregator.api.schemas import ThreatPublic
from aggregator.store.models import ThreatWithMessage

router = APIRouter(tags=["threats"], dependencies=[VIEWER], responses=AUTH_RESPONSES)


def threat_fields(found: ThreatWithMessage) -> dict[str, Any]:
    """A threat as :class:`ThreatPublic`'s fields, in its order, ready for
    :func:`~aggregator.api.deps.json_response` (pydantic-core writes them as the model would:
    ``tests/test_api_request_path.py`` compares the bytes)."""
    t, m = found.threat, found.message
    return {
        "id": t.id,
        "event_id": t.event_id,
        "agent_id": t.agent_id,
        "camera": t.camera,
        "rule": t.rule,
        "severity": t.severity,
        "label": t.label,
        "score": t.score,
        "xyxy": t.xyxy,
        "captured_at": dt(t.captured_ts),
        "provenance": {
            "agent_id": m.agent_id,
            "message_id": m.message_id,
            "lineage_id": m.lineage_id,
            "frame_id": m.frame_id,
            "frame_sha256": m.frame_sha256,
            "frame_kind": m.frame_kind,
            "frame_source": m.frame_source,
            "model_sha256": m.model_sha256,
            "rules_sha256": m.rules_sha256,
            "config_sha256": m.config_sha256,
            "code_version": m.code_version,
            "snapshot_sha256": m.snapshot_sha256,
            "received_at": datetime.fromisoformat(m.received_at),
        },
    }


@router.get(
    "/api/threats",
    response_model=list[ThreatPublic],
    summary="Threats, newest first, with provenance, a page at a time (keyset: the next "
    'page\'s cursor comes in the Link rel="next" and X-Next-Cursor headers)',
)
async def list_threats(
    request: Request,
    conn: Db,
    limit: Limit,
    camera: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    since: Annotated[datetime | None, Query(description="captured at or after")] = None,
    until: Annotated[datetime | None, Query(description="captured before")] = None,
    before_id: BeforeId = None,
    cursor: paging.IdCursor = None,
) -> Response:
    before_id = paging.below_id(cursor, before_id)

    def page(conn: store.Connection) -> Response:
        found = store.messages.list_threats(
            conn,
            limit=limit,
            camera=camera,
            agent_id=agent_id,
            rule=rule,
            since_ts=epoch(since),
            until_ts=epoch(until),
            before_id=before_id,
        )
        response = json_response([threat_fields(t) for t in found])
        if len(found) == limit:
            paging.link_next(request, response, paging.id_cursor(found[-1].threat.id))
        return response

    return await quick_read(conn, page)
