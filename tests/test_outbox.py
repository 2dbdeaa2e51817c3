"""The agent's durable outbox (a real SQLite file) and its publisher against a real Mosquitto."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.mqtt import MqttLink
from agent.outbox import Outbox, spool_folder
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from wire.payloads import ReceiptMessage, StatusMessage, dump_payload


def test_messages_survive_a_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 20)
    for i in range(5):
        box.put(message_id=f"m{i}", topic="t", payload=f"payload {i}".encode())
    box.delete(box.pending()[0].seq)
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
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    box.put(message_id="same", topic="t", payload=b"1")
    with pytest.raises(sqlite3.IntegrityError):
        box.put(message_id="same", topic="t", payload=b"2")
    assert box.depth() == 1


def _status_of(agent_id: str):  # type: ignore[no-untyped-def]
    def status(state: str) -> StatusMessage:
        return StatusMessage.model_validate(
            {"agent_id": agent_id, "state": state, "sent_at": "2026-01-01T00:00:00Z"}
        )

    return status


def _subscriber(broker: Mosquitto, topic: str, received: list[bytes]) -> mqtt.Client:
    subscribed = threading.Event()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: received.append(bytes(m.payload))
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    wait_for(subscribed.is_set, what="subscribed")
    return sub


def _receipt(stored: list[str], refused: list[str] = ()) -> bytes:  # type: ignore[assignment]
    return dump_payload(
        ReceiptMessage.model_validate(
            {
                "agent_id": "outbox-test",
                "stored": stored,
                "refused": [{"message_id": m, "reason": "schema_violation"} for m in refused],
                "sent_at": "2026-01-01T00:00:00Z",
            }
        )
    )


def test_a_message_leaves_the_outbox_on_the_receipt_not_on_puback(
    tmp_path: Path, broker: Mosquitto
) -> None:
    received: list[bytes] = []
    sub = _subscriber(broker, "outbox-test/#", received)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    ids = [f"{i:032x}" for i in range(50)]
    for i, mid in enumerate(ids):
        box.put(message_id=mid, topic="outbox-test/t", payload=f"{i:03d}".encode())
    link = MqttLink(
        agent_id="outbox-test",
        config=MqttConfig(host=broker.host, port=broker.port),
        outbox=box,
        status=_status_of("outbox-test"),
    )
    try:
        link.start()
        wait_for(lambda: link.acked == 50, what="50 PUBACKs")
        wait_for(lambda: len(received) == 50, what="subscriber got 50 messages")
        assert received == [f"{i:03d}".encode() for i in range(50)]
        assert box.depth() == 50 and box.unsent() == 0 and not link.idle()
        sub.publish(link.topics.receipts, _receipt(ids[:30], refused=ids[30:35]), qos=1)
        wait_for(lambda: box.depth() == 15, what="35 messages forgotten")
        assert [e.message_id for e in box.pending()] == ids[35:]
        assert (link.confirmed, link.refused) == (30, 5)
    finally:
        link.stop()
        sub.loop_stop()
        sub.disconnect()


def test_messages_without_a_receipt_are_sent_again_after_a_reconnect(
    tmp_path: Path, broker: Mosquitto
) -> None:
    received: list[bytes] = []
    sub = _subscriber(broker, "outbox-test2/#", received)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    ids = [f"{i:032x}" for i in range(5)]
    for i, mid in enumerate(ids):
        box.put(message_id=mid, topic="outbox-test2/t", payload=str(i).encode())
    config = MqttConfig(host=broker.host, port=broker.port)
    link = MqttLink(
        agent_id="outbox-test2", config=config, outbox=box, status=_status_of("outbox-test2")
    )
    try:
        link.start()
        wait_for(lambda: len(received) == 5, what="first delivery")
        link.client.reconnect()  # as after a broker restart: a new connection
        wait_for(lambda: len(received) == 10, what="second delivery after the reconnect")
        assert received == [str(i).encode() for i in range(5)] * 2
    finally:
        link.stop()
        sub.loop_stop()
        sub.disconnect()


def test_delete_on_puback_mode_forgets_on_puback(tmp_path: Path, broker: Mosquitto) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    box.put(message_id="a" * 32, topic="outbox-test3/t", payload=b"x")
    config = MqttConfig(host=broker.host, port=broker.port)
    link = MqttLink(
        agent_id="outbox-test3",
        config=config,
        outbox=box,
        status=_status_of("outbox-test3"),
        delete_on="puback",
    )
    try:
        link.start()
        wait_for(lambda: box.depth() == 0, what="deleted on PUBACK")
        assert link.acked == 1
    finally:
        link.stop()


def test_nothing_leaves_the_outbox_while_the_broker_is_away(tmp_path: Path) -> None:
    own = Mosquitto(tmp_path / "broker")  # not started: its port refuses connections
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    box.put(message_id="m1", topic="outbox-test/t", payload=b"1")
    link = MqttLink(
        agent_id="outbox-test",
        config=MqttConfig(host=own.host, port=own.port),
        outbox=box,
        status=_status_of("outbox-test"),
    )
    link.start()
    try:
        assert not link.connected.wait(1.0)
        assert box.depth() == 1
        own.start()
        wait_for(lambda: box.unsent() == 0, timeout_s=60, what="delivery after the broker came up")
    finally:
        link.stop()
        own.stop()


def test_an_unreachable_broker_is_logged_with_host_port_reason_and_next_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    link = MqttLink(
        agent_id="outbox-test",
        config=MqttConfig(host="127.0.0.1", port=port),
        outbox=Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20),
        status=_status_of("outbox-test"),
    )
    link.start()
    try:
        line = wait_for(
            lambda: next(
                (r.getMessage() for r in caplog.records if str(port) in r.getMessage()), None
            ),
            what="a log line about the broker",
        )
    finally:
        link.stop()
    assert re.fullmatch(
        rf"agent=outbox-test cannot reach broker 127\.0\.0\.1:{port}: Connection refused; "
        r"attempt 1, next in [123] s",
        line or "",
    ), line
    assert link.last_connect_error == "Connection refused"


def _file_bytes(path: Path) -> int:
    """What the outbox takes on disk: its file, its WAL and its folder of payload files."""
    wal = Path(f"{path}-wal")
    spool = spool_folder(path)
    payloads = sum(p.stat().st_size for p in spool.iterdir()) if spool.exists() else 0
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0) + payloads


def test_the_outbox_file_shrinks_once_drained(tmp_path: Path) -> None:
    own = Mosquitto(tmp_path / "broker")  # not started yet: an outage
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=64 << 20)
    link = MqttLink(
        agent_id="outbox-test4",
        config=MqttConfig(host=own.host, port=own.port),
        outbox=box,
        status=_status_of("outbox-test4"),
        delete_on="puback",
    )
    link.start()
    try:
        for i in range(150):
            box.put(message_id=f"{i:032x}", topic="outbox-test4/t", payload=os.urandom(100_000))
        assert _file_bytes(path) > 15_000_000
        own.start()
        wait_for(lambda: box.depth() == 0, timeout_s=60, what="the outbox to drain")
        wait_for(lambda: _file_bytes(path) < 256 * 1024, what="the file to shrink")
    finally:
        link.stop()
        own.stop()
    assert Outbox(path, max_bytes=1 << 20).depth() == 0


def test_an_outbox_file_made_without_auto_vacuum_is_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    old = sqlite3.connect(path, isolation_level=None)  # as before: no auto_vacuum, no ledger
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL "
        "UNIQUE, topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL, "
        "created_at REAL NOT NULL, sent_at REAL)"
    )
    for i in range(40):
        old.execute(
            "INSERT INTO outbox (message_id, topic, payload, size, created_at) "
            "VALUES (?, 't', ?, 100000, 0)",
            (f"m{i}", os.urandom(100_000)),
        )
    old.close()
    box = Outbox(path, max_bytes=64 << 20)
    assert box.depth() == 40
    with box.database() as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    assert _file_bytes(path) > 4_000_000
    assert box.confirm([f"m{i}" for i in range(40)]) == 40
    assert _file_bytes(path) < 256 * 1024
