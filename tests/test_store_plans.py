"""The list queries at scale: what the API and the review page ask the store for a page is
answered through an index (SQLite's own query plan of each statement the store runs), never by
a scan of a whole table or a sort of one, so a page costs the same with 1M threats as with ten
(``bench/api_scale.py`` measures it). A new filter or list without its index fails here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import store
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
