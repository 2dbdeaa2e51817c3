from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from aggregator.api.deps import Db, Limit, dt, filters, where_sql
from aggregator.api.schemas import Provenance, ThreatPublic

router = APIRouter(tags=["threats"])

THREAT_SQL = """
SELECT t.*, m.lineage_id, m.frame_id, m.frame_sha256, m.frame_kind, m.frame_source,
       m.model_sha256, m.rules_sha256, m.config_sha256, m.code_version, m.snapshot_sha256,
       m.received_at
FROM threats t JOIN messages m ON m.message_id = t.message_id
"""


def threat_public(row: sqlite3.Row) -> ThreatPublic:
    return ThreatPublic(
        id=row["id"],
        event_id=row["event_id"],
        agent_id=row["agent_id"],
        camera=row["camera"],
        rule=row["rule"],
        severity=row["severity"],
        label=row["label"],
        score=row["score"],
        xyxy=(row["x1"], row["y1"], row["x2"], row["y2"]),
        captured_at=dt(row["captured_ts"]),  # type: ignore[arg-type]
        provenance=Provenance(**{k: row[k] for k in Provenance.model_fields}),
    )


@router.get(
    "/api/threats",
    response_model=list[ThreatPublic],
    summary="Threats, newest first, with provenance",
)
def list_threats(
    conn: Db,
    limit: Limit,
    camera: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    since: Annotated[datetime | None, Query(description="captured at or after")] = None,
    before_id: Annotated[int | None, Query(description="page: threats with id < this")] = None,
) -> list[ThreatPublic]:
    where, args = filters(
        camera=camera, agent_id=agent_id, rule=rule, since=since, alias="t", ts="captured_ts"
    )
    if before_id is not None:
        where.append("t.id < ?")
        args.append(before_id)
    sql = THREAT_SQL + where_sql(where) + " ORDER BY t.id DESC LIMIT ?"
    return [threat_public(r) for r in conn.execute(sql, [*args, limit])]
