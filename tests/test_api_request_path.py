"""The API's cheap request path. The lists and the event page write their answers straight
from the stored rows to JSON bytes (:func:`aggregator.api.deps.json_response`), without building
their response models. The bytes must be exactly what the models would write: each answer is
read back into its response model and written again, and must not change by one byte (a field
missing, added, out of order, an integer where the model has a float, a time written another
way would all show). And the reads on the event loop never wait there for a connection, nor
hold it for long."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from aggregator import store
from aggregator.api.deps import quick_read
from aggregator.api.schemas import EventDetail, EventPublic, ThreatPublic
from tests.support.auth import api_client
from tests.support.ingest import make_config, payload, store_payloads, threat_payload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVENTS = TypeAdapter(list[EventPublic])
THREATS = TypeAdapter(list[ThreatPublic])
DETAIL = TypeAdapter(EventDetail)


def same_as_the_model(adapter: TypeAdapter[Any], body: bytes) -> None:
    assert adapter.dump_json(adapter.validate_json(body)) == body


def test_lists_and_event_pages_are_byte_for_byte_what_the_models_write(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store_payloads(
        config,
        [
            payload(at_s=0),  # with a snapshot, an event that ends (two frames)
            payload(at_s=0.5),
            threat_payload(camera="door", at_s=3, score=1.0, severity="critical"),  # no snapshot
            threat_payload(agent_id="gate-host", camera="gate", at_s=60, score=0.5),
        ],
    )
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            store.events.mark_reviewed(conn, [1], by="ana", now_ts=time.time() + 0.123456)
    finally:
        conn.close()
    client = api_client(config)
    events = client.get("/api/events")
    assert events.status_code == 200
    found = events.json()
    assert {e["id"] for e in found} == {1, 2, 3}
    assert {e["reviewed_by"] for e in found} == {"ana", None}  # a review, and none
    same_as_the_model(EVENTS, events.content)
    threats = client.get("/api/threats?limit=2")  # a page that names the next one
    assert len(threats.json()) == 2 and "next" in threats.links
    same_as_the_model(THREATS, threats.content)
    all_threats = client.get("/api/threats")
    assert {t["provenance"]["snapshot_sha256"] is None for t in all_threats.json()} == {
        True,
        False,
    }
    same_as_the_model(THREATS, all_threats.content)
    for event_id in (1, 2, 3):
        detail = client.get(f"/api/events/{event_id}")
        assert detail.status_code == 200 and detail.json()["threats"]
        same_as_the_model(DETAIL, detail.content)
    assert client.get("/api/events/99").status_code == 404


def test_the_read_pool_never_makes_the_event_loop_wait(tmp_path: Path) -> None:
    """``get_db`` runs on the event loop: with every pooled connection lent, it gets one of its
    own (closed when given back) instead of waiting for one that only the loop can return."""
    path = tmp_path / "secagg.sqlite"
    store.migrate(path)
    pool = store.ReadPool(path, size=1)
    with pool.connection() as pooled, pool.connection(wait=False) as extra:
        assert extra is not pooled
        assert extra.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    with pytest.raises(sqlite3.ProgrammingError):  # the extra one was closed
        extra.execute("SELECT 1")
    with pool.connection(wait=False) as again:
        assert again is pooled  # the pooled one was kept
    pool.close()


def test_a_read_that_takes_long_leaves_the_event_loop_for_the_thread_pool(tmp_path: Path) -> None:
    """The lists run on the event loop; a read that no index serves must not hold it: past
    ``LOOP_BUDGET_S`` SQLite interrupts it and it runs again on the thread pool."""
    path = tmp_path / "secagg.sqlite"
    store.migrate(path)
    conn = store.connect(path, readonly=True)
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) "
        "SELECT COUNT(*) FROM c"
    )
    ran_on: list[str] = []

    def read(sql: str) -> Callable[[store.Connection], int]:
        def run(c: store.Connection) -> int:
            ran_on.append(threading.current_thread().name)
            return int(c.execute(sql).fetchone()[0])

        return run

    async def main() -> tuple[str, int, int]:
        quick = await quick_read(conn, read("SELECT COUNT(*) FROM events"))
        long = await quick_read(conn, read(slow))
        return threading.current_thread().name, quick, long

    try:
        loop, quick, long = asyncio.run(main())
        assert (quick, long) == (0, 1_000_000)
        assert ran_on[:2] == [loop, loop]  # the quick one, then the slow one's first try
        assert len(ran_on) == 3 and ran_on[2] != loop  # which ran again on the pool
        assert conn.execute("SELECT 1").fetchone()[0] == 1  # the handler is gone
    finally:
        conn.close()
