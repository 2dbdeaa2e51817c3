from __future__ import annotations

from fastapi import APIRouter, HTTPException

from aggregator import store
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import Db, dt
from aggregator.api.schemas import AgentPublic, CameraPublic
from aggregator.store.models import AgentRow

router = APIRouter(tags=["agents"], dependencies=[VIEWER], responses=AUTH_RESPONSES)


def agent_public(agent: AgentRow) -> AgentPublic:
    return AgentPublic(
        agent_id=agent.agent_id,
        state=agent.state,
        last_seen_at=dt(agent.last_seen_ts),
        last_status_at=dt(agent.last_status_ts),
        clock_at=dt(agent.clock_ts),
        versions=agent.versions,
        provider=agent.provider,
        outbox_depth=agent.outbox_depth,
        outbox_dropped=agent.outbox_dropped,
        outbox_oldest_age_s=agent.outbox_oldest_age_s,
        outbox_lost=agent.outbox_lost,
        inference_ms=agent.inference_ms,
        cameras=[CameraPublic(**c) for c in agent.cameras],
    )


@router.get(
    "/api/agents",
    response_model=list[AgentPublic],
    summary="Every agent heard from: online/offline, versions, outbox, camera counters",
)
def list_agents(conn: Db) -> list[AgentPublic]:
    return [agent_public(a) for a in store.agents.list_agents(conn)]


@router.get(
    "/api/agents/{agent_id}",
    response_model=AgentPublic,
    summary="One agent",
    responses={404: {"description": "no such agent"}},
)
def get_agent(conn: Db, agent_id: str) -> AgentPublic:
    agent = store.agents.get(conn, agent_id)
    if agent is None:
        raise HTTPException(404, f"agent {agent_id} not known")
    return agent_public(agent)
