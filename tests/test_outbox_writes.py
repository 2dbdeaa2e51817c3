"""What the agent's outbox writes to its disk (flash at the edge): a threat with its snapshot
is written about once on its way through, not five to seven times (a row rewritten when the
broker acknowledged it, journaled, zeroed when deleted). Big payloads are files of their own,
written once and unlinked after the receipt; files that no row names are cleaned up; a file
deleted by hand costs its message only; files processed without threats are recorded together.

The byte counts come from ``/proc/self/io`` (``write_bytes``: what the process sent towards
the disk); a file system that does not count them (tmpfs) skips those tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ledger import FileMark, SqliteLedger
from agent.outbox import INLINE_MAX_BYTES, MARKS_MAX, Outbox, spool_folder

PAYLOAD = os.urandom(250 * 1024)


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


def counting(folder: Path) -> None:
    """Skip unless writes to ``folder`` are counted."""
    before = written()
    with open(folder / "probe", "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
    (folder / "probe").unlink()
    if written() - before < 1 << 20:
        pytest.skip(f"{folder} does not count written bytes (tmpfs?)")


def test_a_threat_with_its_snapshot_is_written_once(tmp_path: Path) -> None:
    counting(tmp_path)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30)
    try:
        for i in range(3):  # the schema and first pages are made
            box.put(message_id=f"{i:032x}", topic="t", payload=PAYLOAD)
            box.confirm([f"{i:032x}"])
        n = 20
        before = written()
        for i in range(100, 100 + n):
            box.put(message_id=f"{i:032x}", topic="t", payload=PAYLOAD)
            box.mark_sent(box.pending()[0].seq)  # the broker acknowledged it
            box.confirm([f"{i:032x}"])  # the aggregator's receipt
        per_message = (written() - before) / n
    finally:
        box.close()
    # Before: 1.7 MB for a 250 KB payload (7x). Now the payload once and the small rows.
    assert per_message < 1.6 * len(PAYLOAD), f"{per_message / 1024:.0f} KiB per message"


def test_big_payloads_are_files_small_ones_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 30)
    spool = spool_folder(path)
    try:
        box.put(message_id="a" * 32, topic="t", payload=b"small")
        box.put(message_id="b" * 32, topic="t", payload=PAYLOAD)
        assert sorted(p.name for p in spool.iterdir()) == ["b" * 32 + ".msg"]
        assert [e.payload for e in box.pending()] == [b"small", PAYLOAD]
        assert box.confirm(["b" * 32]) == 1
        assert list(spool.iterdir()) == []
        assert box.depth() == 1
    finally:
        box.close()
    assert len(PAYLOAD) > INLINE_MAX_BYTES


def test_messages_dropped_to_keep_the_bound_take_their_files(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=3 * len(PAYLOAD))
    try:
        dropped = sum(box.put(message_id=f"{i:032x}", topic="t", payload=PAYLOAD) for i in range(5))
        assert dropped == 2 and box.depth() == 3 and box.dropped() == 2
        assert sorted(p.stem for p in spool_folder(path).iterdir()) == [
            f"{i:032x}" for i in (2, 3, 4)
        ]
    finally:
        box.close()


ORPHAN = """
import os, sys
from pathlib import Path
from agent.outbox import Outbox, spool_folder
from agent.spool import Spool
box = Outbox(Path(sys.argv[1]), max_bytes=1 << 30)
box.put(message_id="a" * 32, topic="t", payload=b"x" * 100_000)
Spool(spool_folder(box.path)).write("b" * 32 + ".msg", b"y" * 100_000)  # its row never commits
os._exit(0)
"""


def test_a_payload_file_whose_row_never_committed_is_deleted_at_start(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    subprocess.run([sys.executable, "-c", ORPHAN, str(path)], check=True)
    assert len(list(spool_folder(path).iterdir())) == 2
    box = Outbox(path, max_bytes=1 << 30)
    try:
        assert [p.name for p in spool_folder(path).iterdir()] == ["a" * 32 + ".msg"]
        assert [e.message_id for e in box.pending()] == ["a" * 32]
    finally:
        box.close()


def test_a_payload_file_deleted_by_hand_costs_its_message_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 30)
    try:
        for i in range(3):
            box.put(message_id=f"{i:032x}", topic="t", payload=PAYLOAD)
        (spool_folder(path) / f"{1:032x}.msg").unlink()
        assert [e.message_id for e in box.pending()] == [f"{0:032x}", f"{2:032x}"]
        assert box.depth() == 2 and box.dropped() == 1
        assert f"outbox message={1:032x} lost: its payload file" in caplog.text
    finally:
        box.close()


def _mark(i: int) -> FileMark:
    return FileMark(camera="door", key=f"s{i}.jpg", size=1000 + i, mtime_ns=i)


def test_files_without_threats_are_recorded_together(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_bytes=1 << 30)
    ledger = SqliteLedger(box)
    try:
        ledger.record([_mark(0)])
        with box.database() as db:  # not written yet...
            assert db.execute("SELECT COUNT(*) FROM processed_files").fetchone() == (0,)
        assert ledger.signatures("door", ["s0.jpg"]) == {"s0.jpg": (1000, 0)}  # ...but known
        ledger.record([_mark(i) for i in range(1, MARKS_MAX)])  # the batch is full: written
        with box.database() as db:
            assert db.execute("SELECT COUNT(*) FROM processed_files").fetchone() == (MARKS_MAX,)
        ledger.record([_mark(MARKS_MAX)])
        box.put(message_id="a" * 32, topic="t", payload=b"m", processed=_mark(MARKS_MAX + 1))
        with box.database() as db:  # a message takes the deferred ones with it
            rows = db.execute("SELECT COUNT(*) FROM processed_files").fetchone()
        assert rows == (MARKS_MAX + 2,)
        ledger.record([_mark(MARKS_MAX + 2)])
        ledger.forget("door", [f"s{MARKS_MAX + 2}.jpg"])
        assert ledger.signatures("door", [f"s{MARKS_MAX + 2}.jpg"]) == {}
        ledger.record([_mark(MARKS_MAX + 3)])
    finally:
        box.close()  # writes what is deferred
    box = Outbox(path, max_bytes=1 << 30)
    try:
        keys = {k for k, _ in SqliteLedger(box).keys_after("door", "", 1000)}
        assert len(keys) == MARKS_MAX + 3 and f"s{MARKS_MAX + 2}.jpg" not in keys
    finally:
        box.close()
