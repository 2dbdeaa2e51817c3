"""The store layer: older databases upgrade (also those already holding duplicate threats), and
the row counts the health endpoint reads stay equal to the tables' contents."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from aggregator import store
from aggregator.config import AggregatorConfig
from tests.support.ingest import (
    make_config,
    released_row,
    status_payload,
    store_payloads,
    threat_payload,
)


def _as_released(config: AggregatorConfig, *, before: str) -> None:
    """A store created by the code of an earlier release: the migrations before ``before``."""
    conn = store.connect(config.store.path)
    try:
        store.migrations.apply(sqlite_utils.Database(conn), stop_before=before)
    finally:
        conn.close()


def _insert_as_released(config: AggregatorConfig, payload: dict[str, Any]) -> None:
    """A message row and its threat as the code of m001..m005 stored them."""
    row = released_row(payload, received_at=datetime.now(UTC).isoformat(), snapshot_sha256=None)
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            conn.execute(
                f"INSERT INTO messages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            conn.execute(
                "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, "
                "last_seen_ts, threat_count, top_score, top_message_id) "
                "VALUES ('cam-host', 'yard', 'person_on_premises', 'person', 'high', ?, ?, 1, "
                "0.8, ?)",
                (row["captured_ts"], row["captured_ts"], row["message_id"]),
            )
            conn.execute(
                "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, "
                "label, class_id, score, x1, y1, x2, y2, captured_ts) VALUES (?, "
                "last_insert_rowid(), 'cam-host', 'yard', 'person_on_premises', 'high', 'person', "
                "0, 0.8, 10, 20, 110, 220, ?)",
                (row["message_id"], row["captured_ts"]),
            )
    finally:
        conn.close()


def test_a_store_already_holding_duplicates_upgrades_and_keeps_them(tmp_path: Path) -> None:
    """Before m006, an agent restart stored the same still twice under two message ids."""
    config = make_config(tmp_path)
    _as_released(config, before="m006_one_message_per_frame")
    first = threat_payload(at_s=0)
    copy = threat_payload(at_s=30, frame_sha256=first["frame"]["sha256"])
    _insert_as_released(config, first)
    _insert_as_released(config, copy)
    store.migrate(config.store.path)  # does not fail on the duplicate
    conn = store.connect(config.store.path, readonly=True)
    keys = dict(conn.execute("SELECT message_id, content_key FROM messages").fetchall())
    counts = store.counters.row_counts(conn)
    conn.close()
    assert keys[first["message_id"]] is not None and keys[copy["message_id"]] is None
    assert (counts.messages, counts.threats, counts.events) == (2, 2, 2)  # nothing deleted
    # From now on a third copy is a duplicate.
    third = threat_payload(at_s=60, frame_sha256=first["frame"]["sha256"])
    result = store_payloads(config, [third])
    assert result.counts == {"duplicate": 1}


def test_the_agent_clock_is_backfilled(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    _as_released(config, before="m007_agent_clock")
    p = threat_payload(at_s=42)
    _insert_as_released(config, p)
    conn = store.connect(config.store.path)
    conn.execute("INSERT INTO agents (agent_id, state, last_seen_ts) VALUES ('cam-host', 'x', 0)")
    conn.close()
    store.migrate(config.store.path)
    conn = store.connect(config.store.path, readonly=True)
    agent = store.agents.get(conn, "cam-host")
    conn.close()
    assert agent is not None
    assert agent.clock_ts == datetime.fromisoformat(p["frame"]["captured_at"]).timestamp()


def test_the_row_counts_follow_the_tables(
    tmp_path: Path, store_target: store.schema.Target
) -> None:
    """On both backends (``store_target``)."""
    config = make_config(tmp_path)
    first = threat_payload(at_s=0)
    # cam-host: yard at 0 and 1 (event 1), door at 50 (event 2; on cam-host's clock event 1
    # has ended); gate-host: event 3; a redelivery and a status count for nothing.
    store_payloads(
        config,
        [
            first,
            threat_payload(at_s=1),
            threat_payload(at_s=50, camera="door"),
            threat_payload(agent_id="gate-host", at_s=3),
            first,
        ],
        target=store_target,
    )
    store_payloads(config, [status_payload()], target=store_target)
    conn = store.connect(store_target)
    try:
        counts = store.counters.row_counts(conn)
        actual = {
            name: conn.execute(f"SELECT COUNT(*) FROM {table}{where}").fetchone()[0]
            for name, table, where in (
                ("messages", "messages", ""),
                ("threats", "threats", ""),
                ("events", "events", ""),
                ("open_events", "events", " WHERE ended_ts IS NULL"),
                ("agents", "agents", ""),
            )
        }
        assert {k: getattr(counts, k) for k in actual} == actual
        assert actual == {
            "messages": 4,
            "threats": 4,
            "events": 3,
            "open_events": 2,
            "agents": 2,
        }
    finally:
        conn.close()
