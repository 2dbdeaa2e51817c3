"""Dependencies shared by the routes: settings, a read-only database connection, paging."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query

from aggregator import store
from aggregator.config import AggregatorConfig, get_settings

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


def dt(ts: float | None) -> datetime | None:
    """A stored epoch timestamp as an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def filters(
    *,
    camera: str | None,
    agent_id: str | None,
    rule: str | None,
    since: datetime | None,
    alias: str,
    ts: str,
) -> tuple[list[str], list[Any]]:
    """WHERE clauses and arguments for the common list filters."""
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


def where_sql(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""
