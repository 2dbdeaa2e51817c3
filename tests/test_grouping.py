"""Event grouping: a database from before group keys is upgraded and its open events go on
collecting threats; events end on one clock (the agent's), fall back to the aggregator's wall
clock only for a silent agent, end once each even after an aggregator outage, and an ended event
is never reopened."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlite_utils
from paho.mqtt.enums import CallbackAPIVersion

from aggregator import events, store
from aggregator.events import EventChange
from aggregator.ingest import Ingest
from aggregator.store.models import OpenEventClock
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import (
    T0,
    ingest_config,
    make_config,
    status_payload,
    store_payloads,
    subscribe_json,
    threat_payload,
)


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
        ended = events.end_idle(conn, now_ts=121, cutoff_s=10, listening_since_ts=100)
    assert ended == [events.EventChange("end", 1)]
    conn.close()


def test_group_keys() -> None:
    grouping = events.Grouping(
        cutoff_s=30, group_by=("camera", "rule"), sites={"door": "home"}, site_window_s=5
    )
    assert grouping.key(agent_id="a", camera="yard", rule="r") == ("camera=yard|rule=r", 30)
    assert grouping.key(agent_id="a", camera="door", rule="r") == ("site=home|rule=r", 5)


def test_an_ended_event_is_never_reopened_a_later_threat_starts_a_new_one(
    tmp_path: Path, store_target: store.schema.Target
) -> None:
    """On both backends (``store_target``)."""
    config = make_config(tmp_path)  # cutoff 10 s
    at = {"target": store_target}
    assert store_payloads(
        config, [threat_payload(at_s=0), threat_payload(at_s=1)], **at
    ).changes == [EventChange("new", 1)]
    # The agent's status, sent 30 s later: on its clock the event has ended.
    status = status_payload(sent_at=T0 + timedelta(seconds=30))
    assert store_payloads(config, [status], **at).changes == [EventChange("end", 1)]
    # A threat from its outbox, captured within reach of the ended event: a new event.
    late = store_payloads(config, [threat_payload(at_s=5)], **at)
    assert late.changes == [EventChange("new", 2)]
    conn = store.connect(store_target, readonly=True)
    first, second = store.events.get(conn, 1), store.events.get(conn, 2)
    conn.close()
    assert first is not None and second is not None
    assert (first.state, first.threat_count, first.ended_ts) == ("ended", 2, T0.timestamp() + 1)
    assert (second.threat_count, second.started_ts) == (1, T0.timestamp() + 5)


def test_threats_of_an_agent_end_its_other_cameras_events_on_its_clock(
    tmp_path: Path, store_target: store.schema.Target
) -> None:
    """On both backends (``store_target``)."""
    config = make_config(tmp_path)
    store_payloads(config, [threat_payload(at_s=0, camera="yard")], target=store_target)
    result = store_payloads(config, [threat_payload(at_s=11, camera="door")], target=store_target)
    assert result.changes == [EventChange("end", 1), EventChange("new", 2)]


def _open(*, last_seen: float, clock: float | None, heard: float | None) -> OpenEventClock:
    return OpenEventClock(
        event_id=1,
        agent_id="a",
        last_seen_ts=last_seen,
        cutoff_s=10,
        agent_clock_ts=clock,
        agent_heard_ts=heard,
    )


@pytest.mark.parametrize(
    ("event", "now_ts", "listening_since_ts", "why"),
    [
        # the agent's clock passed the cutoff: ended, whatever the wall clock says
        (_open(last_seen=100, clock=111, heard=1000), 1000, 0, "agent clock"),
        (_open(last_seen=100, clock=111, heard=1000), 1000, None, "agent clock"),
        # the agent's clock has not: open while it is heard from (its clock may lag ours)
        (_open(last_seen=100, clock=105, heard=995), 1000, 0, None),
        # silent for longer than the cutoff while we listened: the wall clock ends it
        (_open(last_seen=100, clock=105, heard=985), 1000, 0, "agent silent"),
        (_open(last_seen=100, clock=None, heard=None), 1000, 0, "agent silent"),
        # silent, but we have been listening for less than the cutoff (an aggregator restart:
        # what the agent sent meanwhile is still on its way from the broker)
        (_open(last_seen=100, clock=105, heard=500), 1000, 995, None),
        # not listening (broker down): nobody counts as silent
        (_open(last_seen=100, clock=105, heard=500), 1000, None, None),
    ],
)
def test_which_clock_ends_an_event(
    event: OpenEventClock, now_ts: float, listening_since_ts: float | None, why: str | None
) -> None:
    assert (
        events.should_end(
            event, now_ts=now_ts, default_cutoff_s=30, listening_since_ts=listening_since_ts
        )
        == why
    )


def test_events_end_once_each_after_an_aggregator_outage_longer_than_the_cutoff(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """secagg is down for longer than cutoff_s while the agent goes on: the threats wait at the
    broker (persistent session). Restarted, secagg must not end the open event on its own wall
    clock before it has read them: each event ends once, on the agent's clock."""
    cutoff_s = 1.0
    config = ingest_config(
        broker,
        tmp_path,
        mqtt={"client_id": f"secagg-{uuid.uuid4().hex[:8]}", "session_expiry_s": 300},
        events={"cutoff_s": cutoff_s, "sweep_interval_s": 0.05},
    )
    start_s = (datetime.now(UTC) - T0).total_seconds()  # capture times: now on

    def threat(at_s: float) -> dict[str, Any]:
        return threat_payload(at_s=start_s + at_s)

    sub, seen = subscribe_json(broker, "secagent/v1/events")
    agent = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    agent.connect(broker.host, broker.port)
    agent.loop_start()

    def send(payload: dict[str, Any]) -> None:
        topic = f"secagent/v1/{payload['agent_id']}/threats"
        agent.publish(topic, json.dumps(payload).encode(), qos=1).wait_for_publish(10)

    try:
        first = Ingest(config)
        first.start()
        wait_for(first.connected.is_set, what="ingest connected")
        for at_s in (0.0, 0.3):
            send(threat(at_s))
        wait_for(lambda: first.stats.stored == 2, what="the first two threats stored")
        first.stop()
        down_since = time.monotonic()
        for at_s in (0.6, 0.9, 8.0):  # the same visit goes on; 8.0: a new one
            send(threat(at_s))
        wait_for(
            lambda: time.monotonic() - down_since > 2 * cutoff_s,
            what="an outage longer than the cutoff",
        )
        second = Ingest(config)
        second.start()
        try:
            wait_for(lambda: second.stats.stored == 3, what="the queued threats stored")
            wait_for(
                lambda: Counter(m["event_id"] for m in seen if m["type"] == "end") == {1: 1, 2: 1},
                what="both events ended",
            )
            conn = store.connect(config.store.path, readonly=True)
            visits = store.events.list_events(conn, limit=10)
            conn.close()
        finally:
            second.stop()
    finally:
        agent.loop_stop()
        agent.disconnect()
        sub.loop_stop()
        sub.disconnect()
    types = Counter((m["type"], m["event_id"]) for m in seen)
    assert types == {("new", 1): 1, ("end", 1): 1, ("new", 2): 1, ("end", 2): 1}
    assert [(e.id, e.threat_count, e.state) for e in visits] == [(2, 1, "ended"), (1, 4, "ended")]
