"""Aggregator ingest against a real Mosquitto: valid threats are stored once, bad payloads are
refused, counted by reason, and never stop the service."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import (
    SHA,
    T0,
    Harness,
    payload,
    status_payload,
    subscribe_json,
    threat_payload,
)


def test_a_threat_is_stored_with_its_provenance(harness: Harness) -> None:
    payload = threat_payload()
    harness.send(payload)
    wait_for(lambda: harness.ingest.stats.stored == 1, what="stored")
    (msg,) = harness.rows("SELECT * FROM messages")
    assert msg["message_id"] == payload["message_id"]
    assert (msg["model_sha256"], msg["rules_sha256"], msg["code_version"]) == (SHA, SHA, "test")
    (threat,) = harness.rows("SELECT * FROM threats")
    assert threat["event_id"] == 1 and threat["score"] == pytest.approx(0.8)


def test_a_redelivered_message_is_stored_once(harness: Harness) -> None:
    payload = threat_payload()
    for _ in range(3):
        harness.send(payload)
    stats = harness.ingest.stats
    # Count threat deliveries only: retained status messages of other tests' agents arrive too.
    wait_for(lambda: stats.stored + stats.duplicates == 3, what="three deliveries")
    assert harness.ingest.stats.stored == 1 and harness.ingest.stats.duplicates == 2
    assert len(harness.rows("SELECT * FROM threats")) == 1


def test_a_still_processed_again_with_new_message_ids_is_stored_once(
    harness: Harness, broker: Mosquitto
) -> None:
    """An agent restarted before it remembered its stills processes them again: new message
    ids, new frame and lineage ids, the same frames, model and rules. Each copy is acknowledged
    and receipted as stored (the agent forgets it), counted as a duplicate, and stores nothing."""
    sub, receipts = subscribe_json(broker, "secagent/v1/cam-host/receipts")
    try:
        first = [threat_payload(at_s=i) for i in range(3)]
        for p in first:
            harness.send(p)
        wait_for(lambda: harness.ingest.stats.stored == 3, what="three stored")
        again = [
            threat_payload(at_s=i + 60, frame_sha256=p["frame"]["sha256"])
            for i, p in enumerate(first)
        ]
        for p in again:
            harness.send(p)
        wait_for(lambda: harness.ingest.stats.duplicates == 3, what="three duplicates")
        sent = {p["message_id"] for p in first + again}
        wait_for(
            lambda: {m for r in receipts for m in r["stored"]} == sent,
            what="every message id receipted as stored",
        )
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert harness.ingest.stats.stored == 3
    assert len(harness.rows("SELECT * FROM messages")) == 3
    assert len(harness.rows("SELECT * FROM threats")) == 3
    counters = {r["name"]: r["value"] for r in harness.rows("SELECT * FROM ingest_counters")}
    assert (counters["stored"], counters["duplicate"]) == (3, 3)


def test_identical_video_frames_at_different_positions_are_each_stored(harness: Harness) -> None:
    """A still scene gives video frames with identical pixels (one sha256): each position in
    the video is a sighting of its own, so only the same position counts as a duplicate."""
    frames = [payload(at_s=t) for t in (0, 0.5, 1)]
    for p in frames:
        harness.send(p)
    wait_for(lambda: harness.ingest.stats.stored == 3, what="three stored")
    harness.send({**payload(at_s=0.5), "message_id": uuid.uuid4().hex})
    wait_for(lambda: harness.ingest.stats.duplicates == 1, what="the same position again")
    assert len({p["frame"]["sha256"] for p in frames}) == 1
    assert len(harness.rows("SELECT * FROM threats")) == 3


def _deep(n: int) -> bytes:
    return b'{"schema": "secagent.threat/1", "x": ' + b"[" * n + b"]" * n + b"}"


BAD_PAYLOADS = [
    ("not json", b"{not json", "invalid_json"),
    ("binary garbage", bytes(range(256)) * 4, "invalid_json"),
    ("a list", b"[1, 2, 3]", "not_an_object"),
    ("no schema", json.dumps({"message_id": "x"}).encode(), "missing_schema"),
    (
        "future major",
        json.dumps({**threat_payload(), "schema": "secagent.threat/3"}).encode(),
        "unknown_schema",
    ),
    (
        "status on threats topic",
        json.dumps(
            {
                "schema": "secagent.status/1",
                "agent_id": "cam-host",
                "state": "online",
                "sent_at": T0.isoformat(),
            }
        ).encode(),
        "wrong_schema",
    ),
    ("wrong type", json.dumps({**threat_payload(), "camera": 42}).encode(), "schema_violation"),
    ("score above 1", json.dumps(threat_payload(score=1.5)).encode(), "schema_violation"),
    ("no threats", json.dumps({**threat_payload(), "threats": []}).encode(), "schema_violation"),
    ("deep nesting", _deep(100_000), "invalid_json"),
    (
        "huge string",
        json.dumps({**threat_payload(), "camera": "x" * 5_000_000}).encode(),
        "oversize",
    ),
    (
        "agent id of someone else",
        json.dumps(threat_payload(agent_id="other-host")).encode(),
        "agent_mismatch",
    ),
]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(p, r) for _, p, r in BAD_PAYLOADS],
    ids=[name for name, _, _ in BAD_PAYLOADS],
)
def test_bad_payloads_are_refused_and_counted(
    harness: Harness, payload: bytes, reason: str
) -> None:
    harness.send(payload)
    harness.send(threat_payload())  # the service goes on: a good one after it is stored
    wait_for(lambda: harness.ingest.stats.stored == 1, what="the good message stored")
    assert harness.ingest.stats.rejected == {reason: 1}
    assert len(harness.rows("SELECT * FROM messages")) == 1
    counters = {r["name"]: r["value"] for r in harness.rows("SELECT * FROM ingest_counters")}
    assert counters[f"rejected_{reason}"] == 1


def test_threats_group_into_events_by_cutoff_and_escalate(harness: Harness) -> None:
    # Visit one: 0 s, 4 s, 8 s (severity rises at 8 s); visit two starts 30 s later (> cutoff).
    for at_s, severity in ((0, "high"), (4, "high"), (8, "critical"), (38, "high"), (40, "high")):
        harness.send(threat_payload(at_s=at_s, severity=severity))
    wait_for(lambda: harness.ingest.stats.stored == 5, what="five stored")
    events = harness.rows("SELECT * FROM events ORDER BY id")
    assert [(e["threat_count"], e["severity"]) for e in events] == [(3, "critical"), (2, "high")]
    assert events[0]["ended_ts"] == pytest.approx((T0 + timedelta(seconds=8)).timestamp())
    counts = {
        r["event_id"]: r["n"]
        for r in harness.rows("SELECT event_id, COUNT(*) AS n FROM threats GROUP BY event_id")
    }
    assert counts == {1: 3, 2: 2}


def test_event_lifecycle_is_published(harness: Harness, broker: Mosquitto) -> None:
    sub, seen = subscribe_json(broker, "secagent/v1/events")
    try:
        harness.send(threat_payload(at_s=0))
        wait_for(lambda: [m["type"] for m in seen] == ["new"], what="new")
        # The agent's next status, sent more than the cutoff later: on its clock, the event ended.
        status = status_payload(sent_at=T0 + timedelta(seconds=11))
        harness.send(status, topic="secagent/v1/cam-host/status")
        wait_for(lambda: [m["type"] for m in seen] == ["new", "end"], what="new then end")
        assert all(m["schema"] == "secagent.event/1" and m["event_id"] == 1 for m in seen)
    finally:
        sub.loop_stop()
        sub.disconnect()
