"""Event grouping in the store: a database from before group keys is upgraded, and its open
events go on collecting threats."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from aggregator import events, store


def test_events_stored_before_group_keys_keep_growing(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = store.connect(path)
    store.migrations.apply(sqlite_utils.Database(conn), stop_before="m003_event_grouping")
    conn.execute(
        "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, last_seen_ts, "
        "threat_count, top_score, top_message_id) "
        "VALUES ('cam-host', 'yard', 'person_on_premises', 'person', 'high', 100, 105, 3, 0.7, 'm')"
    )
    conn.close()
    store.migrate(path)
    conn = store.connect(path)
    grouping = events.Grouping(cutoff_s=10)
    with store.transaction(conn):
        event_id, changes = events.assign(
            conn,
            grouping=grouping,
            agent_id="cam-host",
            camera="yard",
            rule="person_on_premises",
            label="person",
            severity="critical",
            score=0.9,
            captured_ts=110,
            message_id="n",
        )
    assert event_id == 1 and changes == [events.EventChange("update", 1)]
    row = conn.execute("SELECT * FROM events").fetchone()
    assert (row["threat_count"], row["severity"], row["cameras"]) == (4, "critical", '["yard"]')
    with store.transaction(conn):
        ended = events.end_idle(conn, now_ts=121, cutoff_s=10)
    assert ended == [events.EventChange("end", 1)]
    conn.close()


def test_group_keys() -> None:
    grouping = events.Grouping(
        cutoff_s=30, group_by=("camera", "rule"), sites={"door": "home"}, site_window_s=5
    )
    assert grouping.key(agent_id="a", camera="yard", rule="r") == ("camera=yard|rule=r", 30)
    assert grouping.key(agent_id="a", camera="door", rule="r") == ("site=home|rule=r", 5)
