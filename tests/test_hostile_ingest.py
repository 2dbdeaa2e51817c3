"""Poison and amplifying messages at the ingest: each is refused with a counted reason,
acknowledged and receipted as refused, and never holds up or undoes the messages around it;
what a store from before these checks already holds never breaks a read.

The table ``POISON`` is the class of bad input: one mutation of a valid threat message per row,
with the reason it must be refused with (or ``stored`` and the snapshot reason when the threat
is kept without its snapshot)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator import store
from aggregator.ingest import Ingest
from aggregator.records import Outcome
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import (
    JPEG,
    T0,
    ingest_config,
    make_config,
    payload,
    status_payload,
    store_payloads,
    threat_payload,
)
from wire.payloads import PayloadError

NOW = datetime.now(UTC)

Mutation = Callable[[dict[str, Any]], None]


def _frame(**values: Any) -> Mutation:
    return lambda p: p["frame"].update(values)


def _box(xyxy: list[float]) -> Mutation:
    def mutate(p: dict[str, Any]) -> None:
        p["threats"][0]["xyxy"] = xyxy

    return mutate


def _threat(**values: Any) -> Mutation:
    return lambda p: p["threats"][0].update(values)


def _rules(n: int) -> Mutation:
    def mutate(p: dict[str, Any]) -> None:
        one = p["threats"][0]
        p["threats"] = [{**one, "rule": f"rule_{i}"} for i in range(n)]

    return mutate


def _snapshot(data: bytes | str) -> Mutation:
    text = data if isinstance(data, str) else base64.b64encode(data).decode()
    return lambda p: p.update(snapshot_jpeg_b64=text)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF) says ``width`` x ``height``."""
    data = bytearray(JPEG)
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


POISON: list[tuple[str, Mutation, str, str | None]] = [
    # (case, mutation, outcome: refusal reason or "stored", snapshot dropped reason)
    (
        "capture at year 1 +14:00",
        _frame(captured_at="0001-01-01T00:00:00+14:00"),
        "schema_violation",
        None,
    ),
    (
        "capture at year 9999 -14:00",
        _frame(captured_at="9999-12-31T23:59:59-14:00"),
        "schema_violation",
        None,
    ),
    (
        "capture in 2099",
        _frame(captured_at="2099-01-01T00:00:00+00:00"),
        "time_out_of_window",
        None,
    ),
    (
        "capture two days ahead",
        _frame(captured_at=(NOW + timedelta(days=2)).isoformat()),
        "time_out_of_window",
        None,
    ),
    (
        "capture in 1990",
        _frame(captured_at="1990-01-01T00:00:00+00:00"),
        "time_out_of_window",
        None,
    ),
    ("naive capture time", _frame(captured_at="2026-11-28T12:00:00"), "schema_violation", None),
    ("NaN score", _threat(score=float("nan")), "schema_violation", None),
    ("NaN in a box", _box([10.0, float("nan"), 110.0, 220.0]), "schema_violation", None),
    ("infinite box", _box([10.0, 20.0, float("inf"), 220.0]), "schema_violation", None),
    ("x2 < x1", _box([110.0, 20.0, 10.0, 220.0]), "schema_violation", None),
    ("y2 < y1", _box([10.0, 220.0, 110.0, 20.0]), "schema_violation", None),
    ("box far outside the frame", _box([10.0, 20.0, 1e9, 220.0]), "schema_violation", None),
    ("negative box", _box([-500.0, 20.0, 110.0, 220.0]), "schema_violation", None),
    ("non-ASCII in the snapshot", _snapshot("/9j/" + "é" * 8), "schema_violation", None),
    ("snapshot not base64", _snapshot("/9j/4AAQ*!"), "schema_violation", None),
    ("1000 rules in one message", _rules(1000), "too_many_rules", None),
    ("17 rules in one message", _rules(17), "too_many_rules", None),
    ("16 rules in one message", _rules(16), "stored", None),
    (
        "snapshot: random bytes after FFD8",
        _snapshot(b"\xff\xd8" + np.random.default_rng(1).bytes(5000)),
        "stored",
        "undecodable",
    ),
    (
        "snapshot: HTML after FFD8",
        _snapshot(b"\xff\xd8\xff<html><script>alert(1)</script></html>"),
        "stored",
        "undecodable",
    ),
    (
        "snapshot: header claims 65500 px a side",
        _snapshot(_jpeg_claiming(65500, 65500)),
        "stored",
        "bad_dimensions",
    ),
    ("snapshot: a PNG", _snapshot(b"\x89PNG\r\n\x1a\n" + bytes(100)), "stored", "not_jpeg"),
    ("snapshot: a real JPEG", lambda p: None, "stored", None),
]


def _poisoned(mutate: Mutation) -> dict[str, Any]:
    p = payload(at_s=0)
    p["frame"]["captured_at"] = NOW.isoformat()
    mutate(p)
    return p


@pytest.mark.parametrize(
    ("mutate", "expected", "snapshot_dropped"),
    [row[1:] for row in POISON],
    ids=[row[0] for row in POISON],
)
def test_a_poison_message_is_refused_with_its_reason_and_the_next_one_is_stored(
    tmp_path: Path, mutate: Mutation, expected: str, snapshot_dropped: str | None
) -> None:
    config = make_config(tmp_path)
    good = threat_payload(at_s=(NOW - T0).total_seconds(), camera="door")
    result = store_payloads(config, [_poisoned(mutate), good])
    first, second = result.results
    assert isinstance(second, Outcome) and second.kind == "stored"
    if expected == "stored":
        assert isinstance(first, Outcome) and first.kind == "stored"
        assert first.snapshot_dropped == snapshot_dropped
    else:
        assert isinstance(first, PayloadError) and first.reason == expected, first
    conn = store.connect(config.store.path, readonly=True)
    try:
        stored = len(store.messages.list_threats(conn, limit=2000))
        counters = store.counters.ingest_counters(conn)
        files = [p for p in config.store.snapshots_dir.rglob("*") if p.is_file()]
        with api_client(config) as client:  # every read still works
            for url in ("/api/events", "/api/threats", "/api/events/1", "/api/agents"):
                assert client.get(url).status_code == 200, url
    finally:
        conn.close()
    if expected == "stored":
        assert stored >= 2
        kept = snapshot_dropped is None
        assert len(files) == int(kept)
        if snapshot_dropped:
            assert counters[f"snapshot_dropped_{snapshot_dropped}"] == 1
    else:
        assert stored == 1 and counters[f"rejected_{expected}"] == 1
        assert files == []  # a refused message leaves no snapshot file


def _rules_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {name: person_on_premises, labels: [person], severity: high}\n"
        "  - {name: door_only, labels: [person], severity: low, cameras: [door]}\n"
    )
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("rule", "severity", "camera", "expected"),
    [
        ("person_on_premises", "high", "yard", "stored"),
        ("person_on_premises", "critical", "yard", "unknown_rule"),  # not its severity
        ("invented", "high", "yard", "unknown_rule"),
        ("door_only", "low", "door", "stored"),
        ("door_only", "low", "yard", "unknown_rule"),  # not for this camera
    ],
)
def test_with_the_rules_file_known_only_its_rules_are_accepted(
    tmp_path: Path, rule: str, severity: str, camera: str, expected: str
) -> None:
    path, sha = _rules_file(tmp_path)
    config = make_config(tmp_path, reproduce={"rules_paths": [str(path)]})
    p = threat_payload(at_s=(NOW - T0).total_seconds(), camera=camera)
    p["versions"]["rules_sha256"] = sha
    p["threats"][0].update(rule=rule, severity=severity)
    (outcome,) = store_payloads(config, [p]).results
    reason = outcome.kind if isinstance(outcome, Outcome) else outcome.reason  # type: ignore[union-attr]
    assert reason == expected


def test_an_agent_with_an_unknown_rules_file_reports_a_bounded_number_of_rules(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, ingest={"max_rules_per_agent": 20, "max_rules_per_message": 8})
    at_s = (NOW - T0).total_seconds()
    batches = []
    for start in range(0, 40, 8):  # 5 messages of 8 new rules each: 40 names
        p = threat_payload(at_s=at_s)
        one = p["threats"][0]
        p["threats"] = [{**one, "rule": f"r{start + i}"} for i in range(8)]
        batches.append(p)
    results = store_payloads(config, batches).results
    kinds = [r.kind if isinstance(r, Outcome) else r.reason for r in results]  # type: ignore[union-attr]
    assert kinds == ["stored", "stored", "too_many_rules", "too_many_rules", "too_many_rules"]
    conn = store.connect(config.store.path, readonly=True)
    try:
        assert len(store.events.list_events(conn, limit=100)) == 16
    finally:
        conn.close()


def test_resending_one_message_with_other_snapshots_leaves_one_file(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    base = _poisoned(lambda p: None)
    copies = []
    for i in range(20):
        image = np.full((48, 64, 3), i * 10, np.uint8)
        import cv2

        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        copies.append({**base, "snapshot_jpeg_b64": base64.b64encode(jpeg).decode()})
    store_payloads(config, copies[:10])  # one batch
    for copy in copies[10:]:  # and one at a time
        store_payloads(config, [copy])
    files = [p for p in config.store.snapshots_dir.rglob("*") if p.is_file()]
    conn = store.connect(config.store.path, readonly=True)
    try:
        (message,) = store.messages.list_threats(conn, limit=10)
    finally:
        conn.close()
    assert [f.stem for f in files] == [message.message.snapshot_sha256]


EDGE_TIMES = [
    ("year 1 +14:00", "0001-01-01T00:00:00+14:00"),
    ("year 9999 -14:00", "9999-12-31T23:59:59-14:00"),
    ("2099", "2099-01-01T00:00:00+00:00"),
]


@pytest.mark.parametrize("captured_at", [t for _, t in EDGE_TIMES], ids=[n for n, _ in EDGE_TIMES])
def test_times_stored_before_the_checks_never_break_a_read(
    tmp_path: Path, captured_at: str
) -> None:
    """A store written before times were checked: a threat and its event at the calendar's edge
    (stored as the old code did, with the raw timestamp), then a restart: every read answers."""
    config = make_config(tmp_path)
    store_payloads(config, [threat_payload(at_s=0)])
    when = datetime.fromisoformat(captured_at)
    ts = (when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    conn = sqlite3.connect(config.store.path)
    conn.execute("UPDATE threats SET captured_ts = ?", (ts,))
    conn.execute("UPDATE messages SET captured_ts = ?, captured_at = ?", (ts, captured_at))
    conn.execute("UPDATE events SET started_ts = ?, last_seen_ts = ?", (ts, ts))
    conn.execute("UPDATE agents SET clock_ts = ?, status_sent_ts = ?", (ts, ts))
    conn.commit()
    conn.close()
    # the sweep and the next messages still work
    result = store_payloads(
        config,
        [
            threat_payload(at_s=(NOW - T0).total_seconds(), camera="door"),
            status_payload(state="offline", sent_at=NOW),
        ],
    )
    assert [r.kind for r in result.results] == ["stored", "status"]  # type: ignore[union-attr]
    with api_client(config) as client:
        for url in (
            "/api/events",
            "/api/threats",
            "/api/events/1",
            "/api/agents",
            "/api/agents/cam-host",
            "/api/provenance/event:1",
        ):
            assert client.get(url).status_code == 200, url
        assert client.get("/api/agents/cam-host").json()["state"] == "offline"
        made = client.post(
            "/api/plots", json={"kind": "threats_per_hour", "since": "2026-01-01T00:00:00Z"}
        )
        assert made.status_code in (201, 404, 422), made.text  # never a 500


def test_a_status_from_2099_stored_before_the_checks_does_not_freeze_the_agent(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    store_payloads(config, [status_payload(sent_at=NOW)])
    conn = sqlite3.connect(config.store.path)
    far = datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    conn.execute("UPDATE agents SET status_sent_ts = ?, clock_ts = ?", (far, far))
    conn.commit()
    conn.close()
    refused = store_payloads(config, [status_payload(sent_at=datetime(2099, 1, 2, tzinfo=UTC))])
    assert isinstance(refused.results[0], PayloadError)
    assert refused.results[0].reason == "time_out_of_window"
    store_payloads(config, [status_payload(state="offline", sent_at=NOW + timedelta(seconds=1))])
    conn = store.connect(config.store.path, readonly=True)
    try:
        agent = store.agents.get(conn, "cam-host")
    finally:
        conn.close()
    assert agent is not None and agent.state == "offline"
    assert agent.clock_ts == pytest.approx(NOW.timestamp() + 1)


def test_the_last_will_says_offline_although_it_was_set_before_the_last_status(
    tmp_path: Path,
) -> None:
    """The broker's last will carries the status the agent made when it connected: older than
    its later statuses, and still the truth once the agent is gone."""
    config = make_config(tmp_path)
    will = status_payload(state="offline", sent_at=NOW - timedelta(minutes=5))
    store_payloads(config, [status_payload(sent_at=NOW)])
    store_payloads(config, [will])
    conn = store.connect(config.store.path, readonly=True)
    try:
        agent = store.agents.get(conn, "cam-host")
    finally:
        conn.close()
    assert agent is not None and agent.state == "offline"


# over a real broker ----------------------------------------------------------------------------


@pytest.fixture
def agent_client(broker: Mosquitto) -> Iterator[tuple[mqtt.Client, list[dict[str, Any]]]]:
    """A client of agent ``cam-host`` that reads its receipts."""
    receipts: list[dict[str, Any]] = []
    subscribed: list[int] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: receipts.append(json.loads(m.payload))
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.append(mid)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("secagent/v1/cam-host/receipts", qos=1)
    wait_for(lambda: subscribed, what="subscribed to receipts")
    try:
        yield client, receipts
    finally:
        client.loop_stop()
        client.disconnect()


def test_120_poison_messages_are_acked_receipted_and_never_come_back(
    broker: Mosquitto, tmp_path: Path, agent_client: tuple[mqtt.Client, list[dict[str, Any]]]
) -> None:
    """More poison messages than the broker's in-flight window (20 by default), between good
    ones: all are acknowledged (or the window would stop ingest for every agent), receipted as
    refused, and after a restart none of them comes back."""
    client, receipts = agent_client
    config = ingest_config(
        broker,
        tmp_path,
        mqtt={"client_id": f"secagg-{uuid.uuid4().hex[:8]}", "session_expiry_s": 300},
    )
    at_s = (NOW - T0).total_seconds()
    poisons = [_poisoned(POISON[i % 15][1]) for i in range(120)]  # the first 15 rows are refusals
    goods = [threat_payload(at_s=at_s + i, camera="door") for i in range(10)]
    first = Ingest(config)
    first.start()
    try:
        wait_for(first.connected.is_set, what="ingest connected")
        for i, p in enumerate(poisons):
            p["message_id"] = uuid.uuid4().hex
            client.publish("secagent/v1/cam-host/threats", json.dumps(p).encode(), qos=1)
            if i % 12 == 0:
                g = goods[i // 12]
                client.publish("secagent/v1/cam-host/threats", json.dumps(g).encode(), qos=1)
        wait_for(lambda: first.stats.stored == 10, what="the good ones stored")
        wait_for(lambda: sum(first.stats.rejected.values()) == 120, what="120 refused")
        refused = {r["message_id"] for rec in receipts for r in rec["refused"]}
        wait_for(
            lambda: (
                {r["message_id"] for rec in receipts for r in rec["refused"]}
                >= {p["message_id"] for p in poisons}
            ),
            what="every refusal receipted",
        )
        refused = {r["message_id"] for rec in receipts for r in rec["refused"]}
        assert len(refused) == 120
    finally:
        first.stop()
    second = Ingest(config)
    second.start()
    try:
        wait_for(second.connected.is_set, what="ingest connected again")
        client.publish(
            "secagent/v1/cam-host/threats",
            json.dumps(threat_payload(at_s=at_s + 99, camera="door")).encode(),
            qos=1,
        )
        wait_for(lambda: second.stats.stored == 1, what="a new one stored after the restart")
        # nothing of the poison came back (retained statuses of other agents may)
        assert second.stats.received - second.stats.statuses == 1
        assert not second.stats.rejected
    finally:
        second.stop()
