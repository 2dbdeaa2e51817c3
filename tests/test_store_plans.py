"""The list queries at scale: what the API and the review page ask the store for a page is
answered through an index (SQLite's own query plan of each statement the store runs), never by
a scan of a whole table or a sort of one, so a page costs the same with 1M threats as with ten
(``bench/api_scale.py`` measures it). A new filter or list without its index fails here.
The same reads on PostgreSQL: its ``EXPLAIN`` of each statement, with table scans and sorts
disabled, keeps neither (one remains only where no index can serve)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import store
from aggregator.store.backend import PgConnection, PgCursor
from demo.postgres import Postgres
from tests.support.ingest import T0, make_config, store_payloads, threat_payload

WHOLE_TABLE = ("SCAN events", "SCAN threats", "SCAN t", "SCAN m", "SCAN messages", "SCAN run_logs")
T = T0.timestamp()


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    config = make_config(tmp_path_factory.mktemp("plans"))
    store_payloads(
        config,
        [threat_payload(camera=("yard", "door")[i % 2], at_s=60 * i) for i in range(20)],
    )
    found = store.connect(config.store.path, readonly=True)
    yield found
    found.close()


def plans(conn: sqlite3.Connection, read: Callable[[store.Connection], Any]) -> list[str]:
    """The query plan of each statement ``read`` runs (with the values it bound)."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        read(conn)
    finally:
        conn.set_trace_callback(None)
    assert statements
    return [
        " / ".join(str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        for sql in statements
    ]


READS: dict[str, Callable[[store.Connection], Any]] = {
    "events, first page": lambda c: store.events.list_events(c, limit=100),  # see ALLOWED
    "events, a page below a cursor": lambda c: store.events.list_events(c, limit=100, before_id=10),
    "events of a camera": lambda c: store.events.list_events(c, limit=100, camera="door"),
    "events of a camera in a day, below a cursor": lambda c: store.events.list_events(
        c, limit=100, camera="door", since_ts=T, until_ts=T + 86400, before_id=10
    ),
    "threats, a page below a cursor": lambda c: store.messages.list_threats(
        c, limit=100, before_id=10
    ),
    "threats of a camera in a day": lambda c: store.messages.list_threats(
        c, limit=100, camera="door", since_ts=T, until_ts=T + 86400
    ),
    "one event's threats": lambda c: store.messages.threats_of_event(c, 3),
    "the review page's filter choices": lambda c: store.events.distinct_values(c),
    "the latest event": lambda c: store.events.latest_id(c),
    "health counts": lambda c: store.counters.row_counts(c),
    "recent log lines, below a cursor": lambda c: store.logs.recent(c, limit=10, before_id=5),
    "an agent's log lines after a cursor": lambda c: store.logs.of_agent(
        c, "cam-host", since_ts=T, limit=10, after=(T, 3)
    ),
}


ALLOWED = {
    # Without a filter the newest page is the table read backwards by id, stopped by LIMIT:
    # SQLite calls that a scan.
    "events, first page": "SCAN events",
    # An event's threats are found by its index, then sorted by capture time: a sort of one
    # event's rows, not of a table.
    "one event's threats": "USE TEMP B-TREE FOR ORDER BY",
}


@pytest.mark.parametrize("name", READS)
def test_a_page_is_read_through_an_index(conn: sqlite3.Connection, name: str) -> None:
    for plan in plans(conn, READS[name]):
        steps = [step for step in plan.split(" / ") if step != ALLOWED.get(name)]
        scans = [s for s in steps if s.split(" USING")[0] in WHOLE_TABLE]
        assert not scans, f"{name}: {plan}"
        assert not [s for s in steps if "TEMP B-TREE" in s], f"{name} sorts: {plan}"


def test_the_filter_choices_are_each_value_once_in_order(
    conn: store.Connection, tmp_path: Path
) -> None:
    found = store.events.distinct_values(conn)
    assert found == {
        "camera": ["door", "yard"],
        "label": ["person"],
        "severity": ["high"],
        "agent_id": ["cam-host"],
    }
    assert store.events.distinct_values(conn, limit=1)["camera"] == ["door"]
    empty = make_config(tmp_path)
    store.migrate(empty.store.path)
    other = store.connect(empty.store.path, readonly=True)
    try:
        assert store.events.distinct_values(other) == {
            "camera": [],
            "label": [],
            "severity": [],
            "agent_id": [],
        }
    finally:
        other.close()


# PostgreSQL: the same reads through an index -------------------------------------------------


class _Traced(PgConnection):
    """The backend's connection, recording each statement it runs with its values."""

    def __init__(self, conn: PgConnection) -> None:
        super().__init__(conn.raw, url=conn.url)
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = ()) -> PgCursor:
        self.statements.append((sql, params))
        return super().execute(sql, params)


@pytest.fixture(scope="module")
def pg_conn(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[_Traced]:
    config = make_config(tmp_path_factory.mktemp("pg_plans"))
    url = postgres.create_database("plans")
    store_payloads(
        config,
        [threat_payload(camera=("yard", "door")[i % 2], at_s=60 * i) for i in range(20)],
        target=url,
    )
    found = store.connect(url, readonly=True)
    assert isinstance(found, PgConnection)
    # Planner costs say a table scan of 20 rows is cheapest: forbid scans and sorts, so that
    # one remains in a plan only where no index can serve the statement.
    found.execute("ANALYZE")  # read-only is about data: statistics may be gathered
    found.execute("SET enable_seqscan = off")
    found.execute("SET enable_sort = off")
    yield _Traced(found)
    found.close()


PG_WHOLE_TABLE = ("events", "threats", "messages", "run_logs")
PG_ALLOWED_SORT = {"one event's threats"}  # one event's rows, as on SQLite


@pytest.mark.parametrize("name", READS)
def test_a_page_is_read_through_an_index_on_postgresql(pg_conn: _Traced, name: str) -> None:
    pg_conn.statements.clear()
    READS[name](pg_conn)
    assert pg_conn.statements
    for sql, params in list(pg_conn.statements):
        plan = [str(r[0]) for r in PgConnection.execute(pg_conn, f"EXPLAIN {sql}", params)]
        scans = [line for line in plan for t in PG_WHOLE_TABLE if f"Seq Scan on {t}" in line]
        assert not scans, f"{name}: {sql}\n" + "\n".join(plan)
        if name not in PG_ALLOWED_SORT:
            sorts = [line for line in plan if re.match(r"\s*(->\s*)?(Incremental )?Sort  ", line)]
            assert not sorts, f"{name} sorts: {sql}\n" + "\n".join(plan)
