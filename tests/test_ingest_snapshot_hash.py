"""A ``secagent.threat/2`` snapshot's sha256 is computed by the ingest's network thread as the
message arrives, not by the store writer (the one thread every message waits for): hashlib
lets the writer run meanwhile. The snapshot is checked against what the message announced
all the same: a match is kept, a mismatch is dropped and counted, the threat kept either way."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path
from typing import Any

import cv2

from aggregator import store
from aggregator.ingest import Ingest
from aggregator.snapshots import snapshot_path
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for
from tests.support.ingest import Harness, ingest_config, threat_payload
from wire import envelope
from wire.envelope import pack_threat, snapshot_ref
from wire.payloads import ThreatMessage


def jpeg(i: int) -> bytes:
    still = cv2.resize(sample_still("person"), (320, 180))
    cv2.putText(still, str(i), (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    ok, encoded = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(encoded.tobytes())


def threat_v2(snapshot: bytes, *, announced: bytes | None = None) -> tuple[str, bytes]:
    doc: dict[str, Any] = threat_payload(at_s=0)
    doc.pop("snapshot_jpeg_b64", None)
    doc["schema"] = "secagent.threat/2"
    doc["message_id"] = uuid.uuid4().hex
    doc["snapshot"] = snapshot_ref(announced or snapshot).model_dump()
    message = ThreatMessage.model_validate(doc)
    if announced is None:
        return message.message_id, pack_threat(message, snapshot)
    # another JPEG of the same size than the one announced: what a damaged copy looks like
    header = pack_threat(message, announced)[: -len(announced)]
    return message.message_id, header + snapshot


class HashSpy:
    """``hashlib`` as :mod:`wire.envelope` sees it, noting which thread hashed a snapshot."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def sha256(self, data: bytes = b"") -> Any:
        if len(data) > 4096:
            self.threads.append(threading.current_thread().name)
        return hashlib.sha256(data)


def test_snapshots_are_hashed_on_arrival_and_checked(
    broker: Mosquitto, tmp_path: Path, monkeypatch: Any
) -> None:
    snapshots = [jpeg(i) for i in range(3)]
    sent = [threat_v2(s) for s in snapshots]
    damaged = bytearray(snapshots[0])
    damaged[len(damaged) // 2] ^= 0x01
    sent.append(threat_v2(bytes(damaged), announced=snapshots[0]))
    spy = HashSpy()
    monkeypatch.setattr(envelope, "hashlib", spy)
    config = ingest_config(broker, tmp_path)
    ingest = Ingest(config)
    ingest.start()
    try:
        assert ingest.connected.wait(10)
        harness = Harness(ingest, broker, config.store.path)
        for _, raw in sent:
            harness.send(raw)
        wait_for(lambda: ingest.stats.stored == 4, timeout_s=30, what="4 threats stored")
    finally:
        ingest.stop()
    # every snapshot hashed once, on arrival: none by the store writer
    assert len(spy.threads) == 4
    assert "store-writer" not in spy.threads
    conn = store.connect(config.store.path, readonly=True)
    try:
        rows = dict(conn.execute("SELECT message_id, snapshot_sha256 FROM messages").fetchall())
        counters = store.counters.ingest_counters(conn)
    finally:
        conn.close()
    for (message_id, _), snapshot in zip(sent[:3], snapshots, strict=True):
        sha = hashlib.sha256(snapshot).hexdigest()
        assert rows[message_id] == sha
        assert snapshot_path(config.store.snapshots_dir, sha).read_bytes() == snapshot
    assert rows[sent[3][0]] is None  # the threat kept, its damaged snapshot not
    assert counters.get("snapshot_dropped_sha256_mismatch") == 1
