"""The REST API (FastAPI): health, threats, threat events with their provenance."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from aggregator import store
from aggregator.config import AggregatorConfig, get_settings
from wire.version import code_version


class Health(BaseModel):
    status: str = Field(description="'ok' when the broker is connected, else 'degraded'")
    broker_connected: bool
    code_version: str
    messages: int = Field(description="threat messages stored")
    threats: int
    events: int
    open_events: int
    counters: dict[str, int] = Field(description="persistent ingest counters, rejections by reason")


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


class EventDetail(EventPublic):
    threats: list[ThreatPublic]


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


_THREAT_SQL = """
SELECT t.*, m.lineage_id, m.frame_id, m.frame_sha256, m.frame_kind, m.frame_source,
       m.model_sha256, m.rules_sha256, m.config_sha256, m.code_version, m.snapshot_sha256,
       m.received_at
FROM threats t JOIN messages m ON m.message_id = t.message_id
"""


def _threat(row: sqlite3.Row) -> ThreatPublic:
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
        captured_at=_dt(row["captured_ts"]),  # type: ignore[arg-type]
        provenance=Provenance(**{k: row[k] for k in Provenance.model_fields}),
    )


def _event(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "agent_id": row["agent_id"],
        "camera": row["camera"],
        "rule": row["rule"],
        "label": row["label"],
        "severity": row["severity"],
        "state": "open" if row["ended_ts"] is None else "ended",
        "started_at": _dt(row["started_ts"]),
        "last_seen_at": _dt(row["last_seen_ts"]),
        "ended_at": _dt(row["ended_ts"]),
        "threat_count": row["threat_count"],
        "top_score": row["top_score"],
    }


Settings = Annotated[AggregatorConfig, Depends(get_settings)]


def get_db(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A read-only connection for one request (the ingest writer owns the writes)."""
    try:
        conn = store.connect(settings.store.path, readonly=True)
    except sqlite3.OperationalError as exc:
        raise HTTPException(503, f"store not available: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


def page_limit(
    settings: Settings, limit: Annotated[int, Query(ge=1, description="page size")] = 100
) -> int:
    if limit > settings.api.page_size_max:
        raise HTTPException(422, f"limit must be <= {settings.api.page_size_max}")
    return limit


Db = Annotated[sqlite3.Connection, Depends(get_db)]
Limit = Annotated[int, Depends(page_limit)]


def create_app(
    config: AggregatorConfig | None = None, *, broker_connected: Callable[[], bool] | None = None
) -> FastAPI:
    """The API app. ``config`` overrides :func:`get_settings` (what ``secagg serve`` does)."""
    app = FastAPI(
        title="secagg",
        version=code_version(),
        description="Threats and threat events from secagent edge agents, with provenance.",
    )
    if config is not None:
        app.dependency_overrides[get_settings] = lambda: config
    app.state.broker_connected = broker_connected or (lambda: False)

    @app.get("/api/health", response_model=Health, summary="Service health and ingest counters")
    def health(conn: Db, request: Request) -> Health:
        count = lambda sql: int(conn.execute(sql).fetchone()[0])  # noqa: E731
        connected = bool(request.app.state.broker_connected())
        return Health(
            status="ok" if connected else "degraded",
            broker_connected=connected,
            code_version=code_version(),
            messages=count("SELECT COUNT(*) FROM messages"),
            threats=count("SELECT COUNT(*) FROM threats"),
            events=count("SELECT COUNT(*) FROM events"),
            open_events=count("SELECT COUNT(*) FROM events WHERE ended_ts IS NULL"),
            counters=store.counters(conn),
        )

    @app.get(
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
        where, args = _filters(
            camera=camera, agent_id=agent_id, rule=rule, since=since, alias="t", ts="captured_ts"
        )
        if before_id is not None:
            where.append("t.id < ?")
            args.append(before_id)
        sql = _THREAT_SQL + _where(where) + " ORDER BY t.id DESC LIMIT ?"
        return [_threat(r) for r in conn.execute(sql, [*args, limit])]

    @app.get("/api/events", response_model=list[EventPublic], summary="Threat events, newest first")
    def list_events(
        conn: Db,
        limit: Limit,
        camera: str | None = None,
        agent_id: str | None = None,
        rule: str | None = None,
        since: Annotated[datetime | None, Query(description="last seen at or after")] = None,
        state: Annotated[str | None, Query(pattern="^(open|ended)$")] = None,
    ) -> list[EventPublic]:
        where, args = _filters(
            camera=camera, agent_id=agent_id, rule=rule, since=since, alias="e", ts="last_seen_ts"
        )
        if state == "open":
            where.append("e.ended_ts IS NULL")
        elif state == "ended":
            where.append("e.ended_ts IS NOT NULL")
        sql = "SELECT e.* FROM events e" + _where(where) + " ORDER BY e.id DESC LIMIT ?"
        return [EventPublic(**_event(r)) for r in conn.execute(sql, [*args, limit])]

    @app.get(
        "/api/events/{event_id}",
        response_model=EventDetail,
        summary="One threat event with all its threats and their provenance",
        responses={404: {"description": "no such event"}},
    )
    def get_event(conn: Db, event_id: int) -> EventDetail:
        row = conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"event {event_id} not found")
        threats = [
            _threat(r)
            for r in conn.execute(
                _THREAT_SQL + " WHERE t.event_id = ? ORDER BY t.captured_ts, t.id", (event_id,)
            )
        ]
        return EventDetail(**_event(row), threats=threats)

    return app


def _filters(
    *,
    camera: str | None,
    agent_id: str | None,
    rule: str | None,
    since: datetime | None,
    alias: str,
    ts: str,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("camera", camera), ("agent_id", agent_id), ("rule", rule)):
        if value is not None:
            where.append(f"{alias}.{column} = ?")
            args.append(value)
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        where.append(f"{alias}.{ts} >= ?")
        args.append(since.timestamp())
    return where, args


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""
