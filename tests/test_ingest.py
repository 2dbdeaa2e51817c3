"""Aggregator ingest against a real Mosquitto: valid threats are stored once, bad payloads are
refused, counted by reason, and never stop the service."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import SHA, T0, Harness, subscribe_json, threat_payload


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


def _deep(n: int) -> bytes:
    return b'{"schema": "secagent.threat/1", "x": ' + b"[" * n + b"]" * n + b"}"


BAD_PAYLOADS = [
    ("not json", b"{not json", "invalid_json"),
    ("binary garbage", bytes(range(256)) * 4, "invalid_json"),
    ("a list", b"[1, 2, 3]", "not_an_object"),
    ("no schema", json.dumps({"message_id": "x"}).encode(), "missing_schema"),
    (
        "future major",
        json.dumps({**threat_payload(), "schema": "secagent.threat/2"}).encode(),
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
        # Old capture times: the wall-clock sweep ends the event right after it starts.
        harness.send(threat_payload(at_s=0))
        wait_for(lambda: [m["type"] for m in seen] == ["new", "end"], what="new then end")
        assert all(m["schema"] == "secagent.event/1" and m["event_id"] == 1 for m in seen)
    finally:
        sub.loop_stop()
        sub.disconnect()
