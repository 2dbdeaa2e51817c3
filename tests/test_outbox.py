"""The agent's durable outbox (a real SQLite file) and its publisher against a real Mosquitto."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from demo.broker import Mosquitto
from tests.conftest import wait_for
from wire.payloads import StatusMessage


def test_messages_survive_a_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 20)
    for i in range(5):
        box.put(message_id=f"m{i}", topic="t", payload=f"payload {i}".encode())
    box.ack(box.pending()[0].seq)
    box.close()
    reopened = Outbox(path, max_bytes=1 << 20)
    assert [e.message_id for e in reopened.pending()] == ["m1", "m2", "m3", "m4"]
    assert reopened.depth() == 4
    assert [e.payload for e in reopened.pending(after_seq=reopened.pending()[1].seq)] == [
        b"payload 3",
        b"payload 4",
    ]


def test_the_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024)
    payload = b"x" * 10_000
    dropped = sum(box.put(message_id=f"m{i}", topic="t", payload=payload) for i in range(10))
    assert dropped == 4 and box.dropped() == 4
    assert [e.message_id for e in box.pending()] == [f"m{i}" for i in range(4, 10)]
    box.close()
    assert Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024).dropped() == 4


def test_a_message_id_is_stored_once(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    box.put(message_id="same", topic="t", payload=b"1")
    with pytest.raises(sqlite3.IntegrityError):
        box.put(message_id="same", topic="t", payload=b"2")
    assert box.depth() == 1


def _status(state: str) -> StatusMessage:
    return StatusMessage.model_validate(
        {"agent_id": "outbox-test", "state": state, "sent_at": "2026-01-01T00:00:00Z"}
    )


def test_published_messages_leave_the_outbox_only_after_puback(
    tmp_path: Path, broker: Mosquitto
) -> None:
    received: list[bytes] = []
    got = threading.Event()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: (
        received.append(m.payload),
        got.set() if len(received) >= 50 else None,
    )
    sub.connect(broker.host, broker.port)
    sub.subscribe("outbox-test/#", qos=1)
    sub.loop_start()
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    for i in range(50):
        box.put(message_id=f"m{i:03d}", topic="outbox-test/t", payload=f"{i:03d}".encode())
    link = MqttLink(
        agent_id="outbox-test",
        config=MqttConfig(host=broker.host, port=broker.port),  # type: ignore[call-arg]
        outbox=box,
        status=_status,
    )
    try:
        link.start()
        wait_for(lambda: box.depth() == 0, what="outbox drained")
        wait_for(got.is_set, what="subscriber got 50 messages")
        assert link.acked == 50 and link.idle()
        assert received == [f"{i:03d}".encode() for i in range(50)]
    finally:
        link.stop()
        sub.loop_stop()
        sub.disconnect()


def test_nothing_leaves_the_outbox_while_the_broker_is_away(tmp_path: Path) -> None:
    own = Mosquitto(tmp_path / "broker")  # not started: its port refuses connections
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    box.put(message_id="m1", topic="outbox-test/t", payload=b"1")
    link = MqttLink(
        agent_id="outbox-test",
        config=MqttConfig(host=own.host, port=own.port),  # type: ignore[call-arg]
        outbox=box,
        status=_status,
    )
    link.start()
    try:
        assert not link.connected.wait(1.0)
        assert box.depth() == 1
        own.start()
        wait_for(lambda: box.depth() == 0, timeout_s=60, what="delivery after the broker came up")
    finally:
        link.stop()
        own.stop()
