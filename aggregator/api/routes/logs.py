"""What agents and secagg logged about a result (:mod:`aggregator.runlogs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from aggregator import store
from aggregator.api import paging
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import MAX_ID, Db, Limit, dt, epoch
from aggregator.store.logs import LogRow

router = APIRouter(tags=["logs"], dependencies=[VIEWER], responses=AUTH_RESPONSES)
Id = Annotated[str | None, Query(min_length=1, max_length=128)]


class LogLinePublic(BaseModel):
    source: str = Field(description="agent or secagg")
    agent_id: str | None
    level: str
    logger: str
    msg: str
    at: datetime
    lineage_id: str | None
    frame_id: str | None
    camera: str | None
    message_id: str | None
    event_id: int | None
    release_id: int | None


def line_public(row: LogRow) -> LogLinePublic:
    return LogLinePublic(
        source=row.source,
        agent_id=row.agent_id,
        level=row.level,
        logger=row.logger,
        msg=row.msg,
        at=dt(row.at_ts),
        lineage_id=row.lineage_id,
        frame_id=row.frame_id,
        camera=row.camera,
        message_id=row.message_id,
        event_id=row.event_id,
        release_id=row.release_id,
    )


def lines_about_event(
    conn: store.Connection,
    event_id: int,
    *,
    limit: int,
    after: tuple[float, int] | None = None,
) -> list[LogRow]:
    """Lines naming the event, or any of its messages, lineages or frames."""
    messages = store.messages.of_event(conn, event_id)
    return store.logs.about(
        conn,
        event_ids=[event_id],
        message_ids=[m.message_id for m in messages],
        lineage_ids=[m.lineage_id for m in messages],
        frame_ids=[m.frame_id for m in messages],
        limit=limit,
        after=after,
    )


@router.get(
    "/api/logs",
    response_model=list[LogLinePublic],
    summary="Warnings and errors of agents and secagg about a result (an event, a lineage, a "
    "frame, a message), of an agent in a time range, or the latest; oldest first. A page at "
    'a time (keyset: the next page\'s cursor comes in the Link rel="next" and X-Next-Cursor '
    "headers): later lines for a result or an agent, earlier ones for the latest",
)
def list_logs(
    request: Request,
    response: Response,
    conn: Db,
    limit: Limit,
    event_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    lineage_id: Id = None,
    frame_id: Id = None,
    message_id: Id = None,
    agent_id: Id = None,
    since: Annotated[datetime | None, Query(description="agent_id: at or after")] = None,
    until: Annotated[datetime | None, Query(description="agent_id: before")] = None,
    cursor: paging.LogCursor = None,
) -> list[LogLinePublic]:
    if event_id is not None or lineage_id or frame_id or message_id or agent_id is not None:
        after = paging.after_ts_id(cursor)
        if event_id is not None:
            rows = lines_about_event(conn, event_id, limit=limit, after=after)
        elif agent_id is None:
            rows = store.logs.about(
                conn,
                lineage_ids=[lineage_id] if lineage_id else [],
                frame_ids=[frame_id] if frame_id else [],
                message_ids=[message_id] if message_id else [],
                limit=limit,
                after=after,
            )
        else:
            rows = store.logs.of_agent(
                conn,
                agent_id,
                since_ts=epoch(since),
                until_ts=epoch(until),
                limit=limit,
                after=after,
            )
        if len(rows) == limit:
            next_cursor = paging.ts_id_cursor(rows[-1].at_ts, rows[-1].id)
            paging.link_next(request, response, next_cursor)
    else:
        rows = store.logs.recent(conn, limit=limit, before_id=paging.log_below_id(cursor))
        if len(rows) == limit:
            paging.link_next(request, response, paging.id_cursor(rows[0].id))
    return [line_public(r) for r in rows]
