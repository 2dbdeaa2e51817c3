"""A snapshot is durable before its row commits and before its message is acknowledged, and a
crash leaves the snapshots as the store says. For each ``store.snapshot_sync``:

- the real ingest on the test's broker: every fsync or syncfs of a snapshot ends while no
  committed row refers to it yet (each is held for a while, for a COMMIT that would not wait
  for it to come), and every acknowledgement comes after the sync of every snapshot a
  committed row refers to (the sync and the ack are wrapped, not replaced);
- a store writer killed mid-batch (SIGKILL, a real process): killed after the batch's snapshots
  were staged and synced but before its COMMIT, none of them stays once
  :func:`aggregator.snapshots.recover` has run at the next start; killed after the COMMIT but
  before they were put in place, every one a stored row refers to is put in place, whole. Both
  in one store: recover keeps exactly the committed batch's files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from aggregator import snapshots, store
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from aggregator.mqtt_client import IngestClient
from aggregator.snapshots import snapshot_path
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for
from tests.support.ingest import Harness, ingest_config, make_config, payload

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, threading
from pathlib import Path
from aggregator import snapshots
from aggregator.config import AggregatorConfig
from tests.support.ingest import store_payloads

config = AggregatorConfig.model_validate_json(Path(sys.argv[1]).read_text())
payloads = json.loads(Path(sys.argv[2]).read_text())
marker, when = Path(sys.argv[3]), sys.argv[4]
stage = snapshots.PendingSnapshots.stage

def hold() -> None:
    marker.write_text("held")
    threading.Event().wait()  # until killed

def stage_then_hold(self) -> None:
    stage(self)
    hold()

if when == "staged":
    snapshots.PendingSnapshots.stage = stage_then_hold
else:  # "committed": COMMIT done, the files not yet put in place
    snapshots.PendingSnapshots.publish = lambda self: hold()
store_payloads(config, payloads)
raise SystemExit("the batch ran to its end")
"""


def jpeg(i: int) -> bytes:
    still = cv2.resize(sample_still("person"), (320, 180))
    cv2.putText(still, f"{i:04d}", (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    ok, encoded = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(encoded.tobytes())


def batch(first: int, n: int) -> tuple[list[dict[str, object]], dict[str, bytes]]:
    """n threat payloads, each with a snapshot of its own; and those snapshots by sha256."""
    docs, files = [], {}
    for i in range(first, first + n):
        data = jpeg(i)
        doc = payload(at_s=i)
        doc["snapshot_jpeg_b64"] = base64.b64encode(data).decode()
        docs.append(doc)
        files[hashlib.sha256(data).hexdigest()] = data
    return docs, files


def killed_writer(
    config: AggregatorConfig, docs: list[dict[str, object]], when: str, work: Path
) -> None:
    """Store ``docs`` in a process of their own, killed with SIGKILL ``when`` ('staged' or
    'committed')."""
    (work / "config.json").write_text(config.model_dump_json())
    (work / f"{when}.json").write_text(json.dumps(docs))
    marker = work / f"{when}.held"
    argv = [str(work / "config.json"), str(work / f"{when}.json"), str(marker), when]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, timeout_s=60)
        assert child.poll() is None, f"the writer ended by itself ({child.returncode})"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)


def stored_shas(config: AggregatorConfig) -> set[str]:
    conn = store.connect(config.store.path, readonly=True)
    try:
        rows = conn.execute("SELECT snapshot_sha256 FROM messages").fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def on_disk(snapshots_dir: Path) -> tuple[set[str], set[str]]:
    """(sha256s in place, sha256s staged)"""
    placed = {p.name.removesuffix(".jpg") for p in snapshots_dir.glob("*/*.jpg")}
    staged = {p.name.removesuffix(".jpg.tmp") for p in snapshots_dir.glob("*/*.jpg.tmp")}
    return placed, staged


@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_recover_keeps_exactly_what_a_committed_row_refers_to(tmp_path: Path, sync: str) -> None:
    config = make_config(tmp_path, store={"snapshot_sync": sync})
    snaps = config.store.snapshots_dir
    committed, committed_files = batch(0, 12)
    uncommitted, uncommitted_files = batch(100, 9)

    killed_writer(config, committed, "committed", tmp_path)
    assert stored_shas(config) == set(committed_files)
    assert on_disk(snaps) == (set(), set(committed_files))  # staged, not yet in place

    killed_writer(config, uncommitted, "staged", tmp_path)
    assert stored_shas(config) == set(committed_files)  # the second batch never committed
    assert on_disk(snaps) == (set(), set(committed_files) | set(uncommitted_files))

    conn = store.connect(config.store.path)
    try:
        kept, deleted = snapshots.recover(conn, snaps)
    finally:
        conn.close()
    assert (kept, deleted) == (len(committed_files), len(uncommitted_files))
    assert on_disk(snaps) == (set(committed_files), set())
    for sha, data in committed_files.items():
        assert snapshot_path(snaps, sha).read_bytes() == data


HOLD_S = 0.5


class Order:
    """What was synced, and whether a committed row referred to it then; what was acked."""

    def __init__(self, db: Path, snapshots_dir: Path) -> None:
        self.db = db
        self.snapshots_dir = snapshots_dir
        self.lock = threading.Lock()
        self.synced: set[str] = set()
        self.acks = 0
        self.problems: list[str] = []

    def committed(self) -> set[str]:
        conn = store.connect(self.db, readonly=True)
        try:
            rows = conn.execute("SELECT snapshot_sha256 FROM messages").fetchall()
        finally:
            conn.close()
        return {r[0] for r in rows if r[0] is not None}

    def syncing(self, shas: set[str]) -> None:
        """Before a sync of ``shas``: held until a row that refers to one of them commits (the
        problem looked for) or HOLD_S have passed, so a COMMIT that does not wait is caught."""
        deadline = time.monotonic() + HOLD_S
        early = shas & self.committed()
        while not early and time.monotonic() < deadline:
            time.sleep(0.02)  # the poll of a deadline wait
            early = shas & self.committed()
        with self.lock:
            if early:
                self.problems.append(f"synced after its row committed: {sorted(early)}")
            self.synced |= shas

    def acking(self) -> None:
        unsynced = self.committed() - self.synced
        with self.lock:
            self.acks += 1
            if unsynced:
                self.problems.append(f"acked before the sync of {sorted(unsynced)}")


@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_each_snapshot_is_synced_before_its_commit_and_ack(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
) -> None:
    config = ingest_config(broker, tmp_path, store={"snapshot_sync": sync})
    snaps = config.store.snapshots_dir
    order = Order(config.store.path, snaps)
    real_fsync, real_syncfs, real_ack_all = os.fsync, snapshots.syncfs, IngestClient.ack_all

    def fsync(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.endswith(".jpg.tmp"):
            order.syncing({name.removesuffix(".jpg.tmp")})
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        order.syncing({p.name.removesuffix(".jpg.tmp") for p in snaps.glob("*/*.jpg.tmp")})
        real_syncfs(fd)

    def ack_all(self: IngestClient, acks: list[tuple[int, int]]) -> None:
        order.acking()
        real_ack_all(self, acks)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(snapshots, "syncfs", syncfs)
    monkeypatch.setattr(IngestClient, "ack_all", ack_all)
    docs, files = batch(0, 8)
    ingest = Ingest(config)
    ingest.start()
    try:
        assert ingest.connected.wait(10)
        harness = Harness(ingest, broker, config.store.path)
        for doc in docs:
            harness.send(doc)
        wait_for(lambda: ingest.stats.stored == len(docs), timeout_s=30, what="all stored")
        wait_for(lambda: order.committed() == set(files), timeout_s=30, what="all committed")
    finally:
        ingest.stop()
    assert order.problems == []
    assert order.synced == set(files) and order.acks >= 1
    for sha, data in files.items():
        assert snapshot_path(snaps, sha).read_bytes() == data
