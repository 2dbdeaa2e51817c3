"""Delivery under faults, with real processes and a real Mosquitto: numbered threats (serials)
must all be stored exactly once, in order per camera, and nothing else stored.

The agent side is ``secagent send-test-threats`` (the daemon's real outbox and MQTT link, with
synthetic numbered threats instead of camera frames), the aggregator is ``secagg serve``.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.synthetic import serial_of
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.processes import (
    AggregatorProcess,
    finish,
    start_test_threats,
    write_agent_config,
    write_aggregator_config,
)

AGENT = "fault-host"


class Rig:
    """A broker, an aggregator process and the agent config of one fault test."""

    def __init__(self, work: Path, *, outbox_max_bytes: int = 256 * 1024 * 1024) -> None:
        self.work = work
        self.broker = Mosquitto(work / "broker")
        agg_conf, api = write_aggregator_config(work, self.broker, client_id="secagg-faults")
        self.aggregator = AggregatorProcess(agg_conf, api)
        self.agent_conf = write_agent_config(
            work,
            self.broker,
            agent_id=AGENT,
            cameras=(f"  - name: unused\n    source: {{type: directory, path: {work}}}\n"),
            outbox_max_bytes=outbox_max_bytes,
        )
        self.db = work / "secagg.sqlite"
        self.outbox = work / "outbox.sqlite"

    def stored(self) -> list[tuple[str, int]]:
        """(camera, serial) of every stored message, in the order they were stored."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT camera, frame_id FROM messages WHERE agent_id = ? ORDER BY rowid", (AGENT,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
        return [(camera, serial_of(frame_id)) for camera, frame_id in rows]

    def outbox_serials(self) -> list[int]:
        conn = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            payloads = [r[0] for r in conn.execute("SELECT payload FROM outbox")]
        finally:
            conn.close()
        return [serial_of(json.loads(p)["frame"]["frame_id"]) for p in payloads]

    def outbox_counts(self) -> tuple[int, int]:
        """(depth, dropped) as the agent's outbox file says."""
        if not self.outbox.exists():
            return 0, 0
        conn = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            (depth,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
            row = conn.execute(
                "SELECT value FROM outbox_counters WHERE name = 'dropped'"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0, 0
        finally:
            conn.close()
        return int(depth), int(row[0]) if row else 0


def assert_exactly(stored: list[tuple[str, int]], expected: range | list[int]) -> None:
    serials = [s for _, s in stored]
    assert len(serials) == len(set(serials)), "a serial was stored twice"
    assert sorted(serials) == list(expected)
    per_camera: dict[str, list[int]] = defaultdict(list)
    for camera, serial in stored:
        per_camera[camera].append(serial)
    for camera, seq in per_camera.items():
        assert seq == sorted(seq), f"camera {camera}: stored out of order"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    r.broker.start()
    r.aggregator.start()
    try:
        yield r
    finally:
        r.aggregator.stop()
        r.broker.stop()


N = 1200


def test_broker_killed_mid_stream_and_restarted(rig: Rig) -> None:
    gen = start_test_threats(rig.agent_conf, count=N, rate_hz=300)
    wait_for(lambda: len(rig.stored()) >= 300, timeout_s=60, what="300 stored")
    rig.broker.stop(kill=True)
    # Down until the agent has queued a good part of the stream in its outbox.
    wait_for(lambda: rig.outbox_counts()[0] >= 150, timeout_s=60, what="outbox filling up")
    rig.broker.start()
    summary = finish(gen)
    assert summary["outbox_depth"] == 0 and summary["dropped"] == 0
    wait_for(lambda: len(rig.stored()) >= N, timeout_s=60, what="all stored")
    assert_exactly(rig.stored(), range(N))


def test_aggregator_killed_mid_stream_and_restarted(rig: Rig) -> None:
    gen = start_test_threats(rig.agent_conf, count=N, rate_hz=300)
    wait_for(lambda: len(rig.stored()) >= 300, timeout_s=60, what="300 stored")
    rig.aggregator.kill()
    wait_for(lambda: rig.outbox_counts()[0] >= 150, timeout_s=60, what="outbox filling up")
    rig.aggregator.start()
    summary = finish(gen)
    assert summary["outbox_depth"] == 0
    assert_exactly(rig.stored(), range(N))


def test_agent_killed_with_unsent_threats_and_restarted(rig: Rig) -> None:
    gen = start_test_threats(rig.agent_conf, count=3 * N, rate_hz=0)
    wait_for(lambda: len(rig.stored()) >= 300, timeout_s=60, what="300 stored")
    # The aggregator paused (SIGSTOP), so a backlog builds whatever the relative speeds of the
    # agent's commits and the aggregator's receipts; then the agent dies with it.
    assert rig.aggregator.proc is not None
    rig.aggregator.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: rig.outbox_counts()[0] >= 100, timeout_s=60, what="100 waiting in the outbox"
        )
        gen.kill()
        gen.wait(timeout=10)
    finally:
        rig.aggregator.proc.send_signal(signal.SIGCONT)
    waiting = rig.outbox_serials()
    assert waiting, "the agent died with nothing in its outbox: the test proves nothing"
    committed = max([*waiting, *(s for _, s in rig.stored())]) + 1
    summary = finish(start_test_threats(rig.agent_conf, count=0))
    assert summary["outbox_depth"] == 0
    wait_for(lambda: len(rig.stored()) >= committed, timeout_s=60, what="the rest stored")
    assert_exactly(rig.stored(), range(committed))


def test_outbox_bound_drops_the_oldest_while_the_broker_is_down(tmp_path: Path) -> None:
    r = Rig(tmp_path, outbox_max_bytes=64 * 1024)
    r.broker.start()
    r.aggregator.start()
    r.broker.stop()
    try:
        total = 300
        gen = start_test_threats(r.agent_conf, count=total, rate_hz=0)
        wait_for(lambda: sum(r.outbox_counts()) >= total, timeout_s=60, what="all committed")
        depth, dropped = r.outbox_counts()
        assert dropped > 0 and depth + dropped == total
        r.broker.start()
        summary = finish(gen)
        assert summary["dropped"] == dropped and summary["outbox_dropped_total"] == dropped
        wait_for(lambda: len(r.stored()) >= depth, timeout_s=60, what="the kept ones stored")
        assert_exactly(r.stored(), range(dropped, total))  # the oldest were dropped
        agent = wait_for(
            lambda: (a := r.aggregator.agent(AGENT)) and a["outbox_dropped"] and a,
            timeout_s=30,
            what="the dropped count in the agent's status",
        )
        assert agent["outbox_dropped"] == dropped
    finally:
        r.aggregator.stop()
        r.broker.stop()


def hostile_payloads(n: int, *, seed: int = 7) -> Iterator[bytes]:
    """``n`` payloads that must all be refused: broken JSON, wrong types, huge strings, deep
    nesting, binary garbage, schema games."""
    rng = random.Random(seed)
    valid = {
        "schema": "secagent.threat/1",
        "message_id": "0" * 32,
        "agent_id": AGENT,
        "camera": "yard",
        "lineage_id": "1" * 32,
        "frame": {
            "frame_id": "f",
            "sha256": "a" * 64,
            "kind": "file",
            "source": "x",
            "captured_at": "2026-11-28T12:00:00Z",
            "width": 10,
            "height": 10,
        },
        "detections": [],
        "threats": [
            {
                "label": "person",
                "class_id": 0,
                "score": 0.9,
                "xyxy": [0, 0, 1, 1],
                "rule": "r",
                "severity": "high",
            }
        ],
        "versions": {
            "code": "x",
            "model_sha256": "a" * 64,
            "rules_sha256": "a" * 64,
            "config_sha256": "a" * 64,
        },
        "sent_at": "2026-11-28T12:00:00Z",
    }
    text = json.dumps(valid)
    wrong_values: list[object] = [None, 1, -1, 1.5, "x y", "", [], {}, True, "9" * 400]
    for i in range(n):
        kind = i % 9
        if kind == 0:  # truncated JSON
            yield text[: rng.randrange(1, len(text) - 1)].encode()
        elif kind == 1:  # a raw control character somewhere: never valid JSON
            at = rng.randrange(1, len(text) - 1)
            yield (text[:at] + chr(rng.randrange(0, 9)) + text[at:]).encode()
        elif kind == 2:  # one field with a wrong type or value
            doc = json.loads(text)
            doc[
                rng.choice(
                    [
                        "camera",
                        "message_id",
                        "frame",
                        "threats",
                        "versions",
                        "sent_at",
                        "lineage_id",
                    ]
                )
            ] = rng.choice(wrong_values)
            yield json.dumps(doc).encode()
        elif kind == 3:  # a huge string
            doc = json.loads(text)
            doc["camera"] = "x" * rng.randrange(100, 200_000)
            yield json.dumps(doc).encode()
        elif kind == 4:  # deep nesting
            depth = rng.randrange(100, 5000)
            yield (
                b'{"schema": "secagent.threat/1", "threats": ' + b"[" * depth + b"]" * depth + b"}"
            )
        elif kind == 5:  # binary garbage
            yield bytes([0xFF]) + rng.randbytes(rng.randrange(1, 2000))
        elif kind == 6:  # a schema major this code does not know (it reads /1 and /2)
            yield json.dumps(
                {**valid, "schema": f"secagent.threat/{rng.randrange(3, 99)}"}
            ).encode()
        elif kind == 7:  # someone else's agent id in the payload
            yield json.dumps({**valid, "agent_id": f"other-{i}"}).encode()
        else:  # a required field missing
            doc = json.loads(text)
            del doc[rng.choice(list(valid))]
            yield json.dumps(doc).encode()


def test_ten_thousand_hostile_payloads_store_nothing(rig: Rig) -> None:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_queued_messages_set(0)
    pub.connect(rig.broker.host, rig.broker.port)
    pub.loop_start()
    try:
        infos = [
            pub.publish(f"secagent/v1/{AGENT}/threats", payload, qos=1)
            for payload in hostile_payloads(10_000)
        ]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        pub.loop_stop()
        pub.disconnect()
    health = wait_for(
        lambda: (h := rig.aggregator.health()) and sum(h["rejected"].values()) >= 10_000 and h,
        timeout_s=120,
        what="10,000 rejections counted",
    )
    assert sum(health["rejected"].values()) == 10_000
    assert health["messages"] == 0 and health["threats"] == 0
    assert set(health["rejected"]) <= {
        "invalid_json",
        "schema_violation",
        "unknown_schema",
        "agent_mismatch",
        "missing_schema",
        "oversize",
    }
    assert rig.aggregator.ready(), "secagg must still be up and subscribed"
    # ... and still stores a legitimate agent's threats.
    finish(start_test_threats(rig.agent_conf, count=5))
    assert_exactly(rig.stored(), range(5))
