"""The API's output models (what the OpenAPI schema documents)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class WorkerHealth(BaseModel):
    """An ingest worker on the same store (``secagg serve --role ingest``), from its heartbeat."""

    name: str
    host: str
    pid: int
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat")
    broker_connected: bool
    problems: list[str] = Field(description="what the worker itself reported")


class Health(BaseModel):
    status: str = Field(
        description="'ok' when the broker is connected and the store writer runs, else "
        "'degraded' (then the answer is 503)"
    )
    problems: list[str] = Field(description="why it is degraded; empty when ok")
    broker_connected: bool
    writer_alive: bool = Field(description="the store writer thread is running")
    writer_stalled: bool = Field(
        description="one batch or sweep has taken longer than ingest.writer_stall_s"
    )
    code_version: str
    messages: int = Field(description="threat messages stored")
    threats: int
    events: int
    open_events: int
    agents: int
    rejected: dict[str, int] = Field(
        description="messages refused since the store was created, by reason"
    )
    counters: dict[str, int] = Field(description="all persistent ingest counters")
    workers: list[WorkerHealth] = Field(
        default_factory=list,
        description="the ingest workers on this store (none when one process does it all); "
        "one not heard from for liveness.WORKER_STALE_S, or reporting a problem, degrades",
    )


class Provenance(BaseModel):
    """Which frame, model file, rules file, config and code produced a threat, on which agent."""

    agent_id: str
    message_id: str
    lineage_id: str
    frame_id: str
    frame_sha256: str
    frame_kind: str
    frame_source: str
    model_sha256: str
    rules_sha256: str
    config_sha256: str
    code_version: str
    snapshot_sha256: str | None
    received_at: datetime


class ThreatPublic(BaseModel):
    id: int
    event_id: int
    agent_id: str
    camera: str
    rule: str
    severity: str
    label: str
    score: float
    xyxy: tuple[float, float, float, float]
    captured_at: datetime
    provenance: Provenance


class EventPublic(BaseModel):
    id: int
    agent_id: str
    camera: str
    rule: str
    label: str
    severity: str
    state: str = Field(description="'open' until cutoff_s passes without a threat, then 'ended'")
    started_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None
    threat_count: int
    top_score: float
    cameras: list[str] = Field(description="every camera of the event (several for a site)")
    reviewed_by: str | None = Field(None, description="who marked it reviewed (null: not yet)")
    reviewed_at: datetime | None = Field(None, description="when it was marked reviewed")


class EventDetail(EventPublic):
    threats: list[ThreatPublic]


class CameraPublic(BaseModel):
    name: str
    state: str = Field(description="running, finished or down")
    counters: dict[str, int] = Field(description="captured, rejected, no_motion, detected, ...")
    fps: float | None = Field(None, description="frames captured a second, between two statuses")
    detail: str | None = Field(None, description="why the camera is down")


class AgentPublic(BaseModel):
    agent_id: str
    state: str = Field(description="online / offline (the last will says offline)")
    last_seen_at: datetime = Field(description="last status or threat message received")
    last_status_at: datetime | None
    clock_at: datetime | None = Field(
        description="the agent's own clock: the latest capture time or status sent_at seen "
        "from it (events end on it)"
    )
    versions: dict[str, str] | None = Field(description="code, model, rules and config versions")
    provider: str | None = Field(description="ONNX Runtime execution provider in use")
    outbox_depth: int = Field(description="threat messages waiting on the agent")
    outbox_dropped: int = Field(description="messages the agent dropped to stay in its bound")
    outbox_oldest_age_s: float = Field(description="age of the oldest waiting message")
    outbox_lost: list[dict[str, Any]] = Field(
        default_factory=list,
        description="outbox files the agent found broken at start and set aside: when, why, "
        "where it moved them, and the messages they held (count and commit times, if readable)",
    )
    cameras: list[CameraPublic]
    inference_ms: float | None = Field(None, description="recent mean time of one inference")


class NotificationAttemptPublic(BaseModel):
    attempt: int
    started_at: datetime
    finished_at: datetime
    outcome: str = Field(description="'sent' or 'error'")
    error: str | None


class NotificationPublic(BaseModel):
    id: int
    event_id: int
    notifier: str
    channel: str = Field(description="smtp or webhook")
    kind: str = Field(description="new, update (severity rose) or repeat")
    state_key: str = Field(description="the event state it is for: new, severity:X, repeat:N")
    state: str = Field(description="pending, sent, failed or suppressed")
    created_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None
    attempts: int
    content_sha256: str | None = Field(description="sha256 of the content sent (once rendered)")
    code_version: str
    last_error: str | None


class NotificationDetail(NotificationPublic):
    content: dict[str, Any] | None = Field(description="what was sent (secagent.notification/1)")
    attempt_log: list[NotificationAttemptPublic]


class ProvenanceGraph(BaseModel):
    """The lineage around one artifact: W3C PROV-style nodes and edges."""

    root: str = Field(description="the artifact asked about, e.g. event:12")
    direction: str = Field(description="upstream (where it came from) or downstream")
    nodes: list[dict[str, Any]] = Field(
        description="artifacts {id, type: artifact, kind, meta} and runs {id: run:N, type: run, "
        "kind, lineage_id, agent_id, code_version, at_ts, meta}"
    )
    edges: list[dict[str, str]] = Field(
        description="{from: run:N, to: artifact, type: used, role} and "
        "{from: artifact, to: run:N, type: wasGeneratedBy}"
    )
    offset: int = Field(0, description="the first artifact of this page, in walk order")
    limit: int | None = Field(None, description="artifacts per page")
    truncated: bool = Field(
        False, description="more artifacts follow: ask again with ?offset=next_offset"
    )
    next_offset: int | None = Field(None, description="offset of the next page (when truncated)")
    runs_truncated: bool = Field(
        False,
        description="an artifact of this page was generated by more runs than a page lists "
        "(4 x limit; identical content from many frames): the first of them are listed",
    )


class PlotPublic(BaseModel):
    id: str = Field(description="sha256 of the PNG")
    artifact_id: str = Field(description="plot:<sha256>, for /api/provenance")
    kind: str
    query: dict[str, Any] = Field(description="the recorded query (kind, since, until, filters)")
    event_ids: list[int] = Field(description="the events the plot covers")
    code_version: str
    created_at: datetime
    png_url: str


class Problem(BaseModel):
    """An error: FastAPI's validation errors (a list) or one message."""

    detail: str | list[dict[str, Any]] = Field(description="what is wrong")
