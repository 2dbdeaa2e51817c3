from __future__ import annotations

import json
import sqlite3

from fastapi import APIRouter, HTTPException

from aggregator.api.deps import Db, dt
from aggregator.api.schemas import AgentPublic, CameraPublic

router = APIRouter(tags=["agents"])


def agent_public(row: sqlite3.Row) -> AgentPublic:
    return AgentPublic(
        agent_id=row["agent_id"],
        state=row["state"],
        last_seen_at=dt(row["last_seen_ts"]),  # type: ignore[arg-type]
        last_status_at=dt(row["last_status_ts"]),
        versions=json.loads(row["versions_json"]) if row["versions_json"] else None,
        provider=row["provider"],
        outbox_depth=row["outbox_depth"],
        outbox_dropped=row["outbox_dropped"],
        outbox_oldest_age_s=row["outbox_oldest_age_s"],
        cameras=[CameraPublic(**c) for c in json.loads(row["cameras_json"])],
    )


@router.get(
    "/api/agents",
    response_model=list[AgentPublic],
    summary="Every agent heard from: online/offline, versions, outbox, camera counters",
)
def list_agents(conn: Db) -> list[AgentPublic]:
    return [agent_public(r) for r in conn.execute("SELECT * FROM agents ORDER BY agent_id")]


@router.get(
    "/api/agents/{agent_id}",
    response_model=AgentPublic,
    summary="One agent",
    responses={404: {"description": "no such agent"}},
)
def get_agent(conn: Db, agent_id: str) -> AgentPublic:
    row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"agent {agent_id} not known")
    return agent_public(row)
