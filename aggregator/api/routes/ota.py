"""Over-the-air updates over HTTP: the signed repository for agents (``/ota/v1/...``: metadata
and artifacts, each request authenticated by the agent's token, artifacts resumable with
``Range``), and the releases and each agent's update history for operators (``/api/...``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from aggregator import store
from aggregator.api.access import AUTH_RESPONSES, VIEWER
from aggregator.api.deps import Db, ReleaseId, RolloutId, Settings, dt
from aggregator.ota import history as ota_history
from aggregator.ota import rollouts, shadow, tokens
from aggregator.ota.repository import Repository
from aggregator.store.releases import ReleaseRow

router = APIRouter(tags=["ota"])
"""The agents' side (``/ota/v1``): an agent's download token, never a user's."""
api_router = APIRouter(tags=["ota"], dependencies=[VIEWER], responses=AUTH_RESPONSES)
"""The operators' side (``/api/...``)."""


class ReleasePublic(BaseModel):
    id: int
    kind: str = Field(description="model, rules, config or agent")
    name: str
    tag: str = Field(description="unique per kind; one tag never names two contents")
    sha256: str
    size: int
    seq: int = Field(description="1, 2, ... per kind; signed, so agents refuse an older one")
    target_path: str = Field(description="its path in the signed repository")
    created_at: Any
    compat: dict[str, Any] = Field(description="what it needs or offers (layout, labels, ...)")


class HistoryEntry(BaseModel):
    at: Any
    kind: str | None
    release_id: int | None
    state: str
    reason: str | None
    rollout_id: int | None
    active: dict[str, Any] = Field(description="the release of each kind active after it")
    frame_id: str | None = Field(None, description="the first frame processed with it")


class ActivePeriod(BaseModel):
    kind: str
    release_id: int | None = Field(description="null: what the agent was installed with")
    sha256: str | None
    since: Any
    until: Any = Field(description="null: still active")


class AgentHistory(BaseModel):
    agent_id: str
    periods: list[ActivePeriod] = Field(description="which release of each kind was active when")
    reports: list[HistoryEntry] = Field(description="every update report, oldest first")


def release_public(row: ReleaseRow) -> ReleasePublic:
    return ReleasePublic(
        id=row.id,
        kind=row.kind,
        name=row.name,
        tag=row.tag,
        sha256=row.sha256,
        size=row.size,
        seq=row.seq,
        target_path=row.target_path,
        created_at=dt(row.created_ts),
        compat=row.compat,
    )


def _authorised(settings: Settings, authorization: str | None) -> Repository:
    if not settings.ota.enabled:
        raise HTTPException(404, "over-the-air updates are not enabled (ota.enabled)")
    try:
        secret = tokens.read_secret(settings.ota.token_secret_file)
    except tokens.TokenError as exc:
        raise HTTPException(503, str(exc)) from exc
    if tokens.agent_of(secret, authorization) is None:
        raise HTTPException(
            401,
            "an agent token is needed: Authorization: Bearer <agent_id>:<token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Repository(settings.ota.repo_dir)


Authorization = Annotated[str | None, Header()]


@router.get(
    "/ota/v1/metadata/{name}",
    summary="Signed repository metadata for agents (root, timestamp, snapshot, targets)",
    responses={401: {"description": "no valid agent token"}, 404: {"description": "no such"}},
)
def metadata(settings: Settings, name: str, authorization: Authorization = None) -> FileResponse:
    repo = _authorised(settings, authorization)
    path = repo.metadata_file(name)
    if path is None:
        raise HTTPException(404, f"no metadata {name}")
    return FileResponse(path, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get(
    "/ota/v1/targets/{kind}/{name}",
    summary="A release artifact, by <sha256>.<name>; Range requests resume a download",
    responses={401: {"description": "no valid agent token"}, 404: {"description": "no such"}},
)
def target(
    settings: Settings, kind: str, name: str, authorization: Authorization = None
) -> FileResponse:
    repo = _authorised(settings, authorization)
    path = repo.target_file(f"{kind}/{name}")
    if path is None:
        raise HTTPException(404, f"no artifact {kind}/{name}")
    return FileResponse(path, media_type="application/octet-stream")


@api_router.get("/api/releases", response_model=list[ReleasePublic], summary="Signed releases")
def list_releases(conn: Db, kind: str | None = None) -> list[ReleasePublic]:
    return [release_public(r) for r in store.releases.list_releases(conn, kind=kind)]


@api_router.get(
    "/api/releases/{release_id}",
    response_model=ReleasePublic,
    summary="One release",
    responses={404: {"description": "no such release"}},
)
def get_release(conn: Db, release_id: ReleaseId) -> ReleasePublic:
    row = store.releases.get(conn, release_id)
    if row is None:
        raise HTTPException(404, f"release {release_id} not found")
    return release_public(row)


@api_router.get(
    "/api/agents/{agent_id}/history",
    response_model=AgentHistory,
    summary="Which release of each kind an agent had active when, and every update report",
)
def agent_history(conn: Db, agent_id: str) -> AgentHistory:
    reports = store.ota.reports(conn, agent_id, limit=10_000)
    return AgentHistory(
        agent_id=agent_id,
        periods=[
            ActivePeriod(
                kind=p.kind,
                release_id=p.release_id,
                sha256=p.sha256,
                since=dt(p.since_ts),
                until=dt(p.until_ts),
            )
            for p in ota_history.periods(reports)
        ],
        reports=[
            HistoryEntry(
                at=dt(r.at_ts),
                kind=r.kind,
                release_id=r.release_id,
                state=r.state,
                reason=r.reason,
                rollout_id=r.rollout_id,
                active=r.active,
                frame_id=r.detail.get("frame_id"),
            )
            for r in reports
        ],
    )


class RolloutAgent(BaseModel):
    agent_id: str
    state: str = Field(description="pending, updating, succeeded, failed or reverted")
    reason: str | None


class RolloutPublic(BaseModel):
    id: int
    release_id: int
    mode: str = Field(description="active, or shadow (the candidate runs beside the model)")
    shadow_fraction: float
    state: str = Field(description="running, paused, halted, completed or aborted")
    reason: str | None
    current_group: int
    success_threshold: float
    error_threshold: float
    created_ts: float
    updated_ts: float
    groups: list[list[RolloutAgent]]


@api_router.get(
    "/api/rollouts", response_model=list[RolloutPublic], summary="Rollouts, newest first"
)
def list_rollouts(conn: Db) -> list[RolloutPublic]:
    return [
        RolloutPublic.model_validate(rollouts.summary(conn, r.id))
        for r in store.rollouts.list_rollouts(conn)
    ]


@api_router.get(
    "/api/rollouts/{rollout_id}",
    response_model=RolloutPublic,
    summary="One rollout: its groups, each agent's state and reason",
    responses={404: {"description": "no such rollout"}},
)
def get_rollout(conn: Db, rollout_id: RolloutId) -> RolloutPublic:
    try:
        return RolloutPublic.model_validate(rollouts.summary(conn, rollout_id))
    except rollouts.RolloutError as exc:
        raise HTTPException(404, str(exc)) from exc


@api_router.get(
    "/api/rollouts/{rollout_id}/compare",
    summary="The shadow comparison of a model rollout, per agent, camera and label",
    responses={404: {"description": "no such model rollout"}},
)
def compare_rollout(conn: Db, rollout_id: RolloutId) -> dict[str, Any]:
    try:
        return shadow.compare(conn, rollout_id)
    except shadow.ShadowError as exc:
        raise HTTPException(404, str(exc)) from exc
