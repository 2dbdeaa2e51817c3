"""Dependencies shared by the routes: settings, a read-only store connection, paging."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Query

from aggregator import store
from aggregator.config import AggregatorConfig, get_settings
from aggregator.timestamps import utc

Settings = Annotated[AggregatorConfig, Depends(get_settings)]


def get_db(settings: Settings) -> Iterator[store.Connection]:
    """A read-only connection for one request (the ingest writer owns the writes)."""
    try:
        conn = store.connect(settings.store.path, readonly=True)
    except store.StoreUnavailable as exc:
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


Db = Annotated[store.Connection, Depends(get_db)]
Limit = Annotated[int, Depends(page_limit)]
BeforeId = Annotated[
    int | None, Query(ge=1, description="next page: only items with an id below this one")
]


def dt(ts: float | None) -> datetime | None:
    """A stored epoch timestamp as an aware UTC datetime."""
    return None if ts is None else utc(ts)


def epoch(value: datetime | None) -> float | None:
    """A query's datetime (UTC when naive) as an epoch timestamp."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
