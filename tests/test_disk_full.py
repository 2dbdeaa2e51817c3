"""The aggregator's disk fills up: ``/api/health`` says so (503), nothing is acknowledged while
the store cannot be written (the threats wait at the broker and in the agents' outboxes), and
once space is freed ingest resumes by itself: every threat stored exactly once, no restart.

The store lives on a real size-limited filesystem: a tmpfs of 4 MiB mounted by the test (this
needs root, as CI runs; elsewhere the test is skipped)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from aggregator import store
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import T0, ingest_config, payload

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at ``tmp_path/disk``."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


def test_a_full_disk_is_reported_and_ingest_resumes_once_space_is_freed(
    broker: Mosquitto, small_disk: Path
) -> None:
    config = ingest_config(
        broker,
        small_disk,
        mqtt={"client_id": f"secagg-{uuid.uuid4().hex[:8]}", "session_expiry_s": 300},
        ingest={"store_retry_max_s": 0.5},
    )
    ingest = Ingest(config)
    ingest.start()
    agent = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    receipts: list[dict[str, Any]] = []
    agent.on_message = lambda c, u, m: receipts.append(json.loads(m.payload))
    agent.connect(broker.host, broker.port)
    agent.loop_start()
    agent.subscribe("secagent/v1/cam-host/receipts", qos=1)
    start_s = (datetime.now(UTC) - T0).total_seconds()
    sent: list[str] = []

    def send(n: int) -> None:
        for _ in range(n):
            p = payload(at_s=start_s + len(sent))
            sent.append(p["message_id"])
            agent.publish("secagent/v1/cam-host/threats", json.dumps(p).encode(), qos=1)

    try:
        with api_client(config, liveness=ingest.liveness) as api:
            wait_for(ingest.connected.is_set, what="ingest connected")
            send(5)
            wait_for(lambda: ingest.stats.stored == 5, what="5 stored before the disk fills")
            assert api.get("/api/health").status_code == 200
            filler = fill(small_disk)
            send(30)
            wait_for(lambda: ingest.store_error is not None, what="the store failure noticed")
            health = api.get("/api/health")
            assert health.status_code == 503
            assert any("store not writable" in p for p in health.json()["problems"])
            assert ingest.stats.stored == 5
            stored_receipts = {m for r in receipts for m in r["stored"]}
            assert stored_receipts <= set(sent[:5])  # nothing receipted that is not stored
            filler.unlink()  # space is freed: no restart
            wait_for(lambda: ingest.stats.stored == 35, what="ingest resumed by itself")
            wait_for(lambda: api.get("/api/health").status_code == 200, what="health ok again")
            wait_for(
                lambda: {m for r in receipts for m in r["stored"]} == set(sent),
                what="every message receipted",
            )
            assert not [r for r in receipts if r["refused"]]
        conn = store.connect(config.store.path, readonly=True)
        try:
            ids = [t.message.message_id for t in store.messages.list_threats(conn, limit=100)]
        finally:
            conn.close()
        assert sorted(ids) == sorted(sent)  # each once
        orphans = [p.name for p in config.store.snapshots_dir.rglob("*.tmp")]
        assert orphans == []
    finally:
        agent.loop_stop()
        agent.disconnect()
        ingest.stop()
