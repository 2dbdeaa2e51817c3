"""Dependencies shared by the routes: settings, a read-only store connection, paging."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import Depends, HTTPException, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from aggregator import store
from aggregator.config import AggregatorConfig, get_settings
from aggregator.timestamps import utc


async def app_settings(request: Request) -> AggregatorConfig:
    """The config the app was made with (:func:`aggregator.api.create_app`), else the cached
    :func:`get_settings` (``SECAGG_CONFIG``)."""
    config: AggregatorConfig | None = request.app.state.config
    return config if config is not None else get_settings()


Settings = Annotated[AggregatorConfig, Depends(app_settings)]
MAX_ID = 2**63 - 1
"""The largest integer SQLite stores: a bigger id in a path or query is refused (422)."""
READ_CONNECTIONS = 4


async def read_pool(request: Request, settings: Settings) -> store.ReadPool:
    """The app's pool of read-only connections (made on first use, one per database). Async
    (it does no I/O): FastAPI runs a plain function dependency on its thread pool, and each
    hop there costs more than the query of a page."""
    pools: dict[str, store.ReadPool] = request.app.state.read_pools
    key = str(settings.store.target)
    pool = pools.get(key)
    if pool is None:
        pool = pools.setdefault(key, store.ReadPool(settings.store.target, size=READ_CONNECTIONS))
    return pool


async def get_db(
    pool: Annotated[store.ReadPool, Depends(read_pool)],
) -> AsyncIterator[store.Connection]:
    """A read-only connection for one request (the ingest writer owns the writes). Async: a
    plain generator dependency would take two hops to the thread pool (one to lend, one to
    give back), each a hand-over of the interpreter lock that costs more than the query.
    Never waits for a connection (the loop would then wait on itself): with all of the pool
    lent, the request gets one of its own."""
    try:
        with pool.connection(wait=False) as conn:
            yield conn
    except store.StoreUnavailable as exc:
        raise HTTPException(503, f"store not available: {exc}") from exc


T = TypeVar("T")

LOOP_BUDGET_S = 0.005
"""How long a read may run on the event loop before it is taken to the thread pool."""


async def quick_read(conn: store.Connection, read: Callable[[store.Connection], T]) -> T:
    """``read(conn)``, on the event loop when it is quick, else on the thread pool.

    The routes that run on the loop (no hop to the thread pool: each hop is a hand-over of the
    interpreter lock, which under concurrent requests cost more than the query) must not hold
    it: a filter that no index serves (``/api/threats?agent_id=`` on 1M threats: 1.1 s) would
    stop every other request meanwhile. So SQLite interrupts the read once it has run for
    :data:`LOOP_BUDGET_S` (a progress handler), and the read starts again on the thread pool,
    where SQLite lets the other requests go on while it scans. Reads only: running one twice
    changes nothing. On PostgreSQL every read is a round trip to the server: the pool."""
    if not isinstance(conn, sqlite3.Connection):
        return await run_in_threadpool(read, conn)
    deadline = time.perf_counter() + LOOP_BUDGET_S
    conn.set_progress_handler(lambda: time.perf_counter() > deadline, 2000)
    try:
        return read(conn)
    except sqlite3.OperationalError as exc:
        if str(exc) != "interrupted":
            raise
    finally:
        conn.set_progress_handler(None, 0)
    if conn.in_transaction:
        conn.rollback()
    return await run_in_threadpool(read, conn)


async def page_limit(
    settings: Settings,
    limit: Annotated[
        int, Query(ge=1, le=MAX_ID, description="page size (at most api.page_size_max)")
    ] = 100,
) -> int:
    """The page size asked for, capped at ``api.page_size_max``."""
    return min(limit, settings.api.page_size_max)


Db = Annotated[store.Connection, Depends(get_db)]
Limit = Annotated[int, Depends(page_limit)]
BeforeId = Annotated[
    int | None,
    Query(ge=1, le=MAX_ID, description="next page: only items with an id below this one"),
]
EventId = Annotated[int, Path(ge=1, le=MAX_ID, description="event id")]
NotificationId = Annotated[int, Path(ge=1, le=MAX_ID, description="notification id")]
ReleaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="release id")]
RolloutId = Annotated[int, Path(ge=1, le=MAX_ID, description="rollout id")]


def dt(ts: float | None) -> datetime | None:
    """A stored epoch timestamp as an aware UTC datetime."""
    return None if ts is None else utc(ts)


def epoch(value: datetime | None) -> float | None:
    """A query's datetime (UTC when naive) as an epoch timestamp."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def json_response(content: Any) -> Response:
    """A response model's fields (plain dicts and lists, datetimes, tuples) written straight to
    JSON bytes by pydantic-core, which writes them as it writes the model: no model is built,
    validated and dumped on the way (for a page of 100 threats with their provenance that was
    two thirds of the request's CPU). The route keeps its ``response_model`` for the OpenAPI
    schema; ``tests/test_api_request_path.py`` checks that the bytes are the model's."""
    return Response(pydantic_core.to_json(content), media_type="application/json")


@contextmanager
def write_connection(settings: AggregatorConfig) -> Iterator[store.Connection]:
    """A short-lived connection of its own for a rare write (a plot, a review, a login, a
    token): the ingest's writer owns the rest. 503 when the store cannot be opened."""
    try:
        conn = store.connect(settings.store.target)
    except store.StoreUnavailable as exc:
        raise HTTPException(503, f"store not available: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()
