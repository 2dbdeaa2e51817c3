"""The durable outbox: a message is committed here before it is published, marked sent when
the broker acknowledges it (PUBACK), and deleted only when the aggregator's receipt says it is
stored (so a broker crash between PUBACK and delivery loses nothing: unreceipted messages are
sent again after every reconnect). Bounded by bytes: beyond the bound the oldest messages are
dropped, counted and logged.

Space is given back once the queue drains: the file uses incremental auto-vacuum (an outbox
file from before is converted once, at open), and when the last message is deleted the free
pages are released and the write-ahead log is checkpointed and truncated, so an outage does not
leave the file at its high-water size.

The same database holds the folder cameras' record of processed files (:mod:`agent.ledger`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent import ledger
from agent.ledger import FileMark

log = logging.getLogger(__name__)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS outbox_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
    + ledger.SCHEMA
)

AUTO_VACUUM_INCREMENTAL = 2
RECLAIM_MIN_BYTES = 256 * 1024
"""Once drained, free pages are released and the WAL truncated when either is over this."""
WAL_LIMIT_BYTES = 4 * 1024 * 1024
"""``journal_size_limit``: what a checkpointed WAL is cut back to at most."""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    message_id: str
    topic: str
    payload: bytes


class Outbox:
    """SQLite outbox shared by the pipeline (put) and the publisher (pending, ack)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._incremental_vacuum()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent_at" not in columns:  # an outbox file from before receipts
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent_at REAL")
        self._changed = threading.Condition()

    def _incremental_vacuum(self) -> None:
        """New files get incremental auto-vacuum; a file made without it is converted once."""
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if mode == AUTO_VACUUM_INCREMENTAL:
            return
        (tables,) = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        self._db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
        if tables:
            log.info("outbox %s: converting to incremental auto-vacuum (once)", self.path)
            self._db.execute("VACUUM")

    def _reclaim_if_drained(self) -> None:
        """The queue is empty: release free pages and truncate the WAL when worth it (holding
        the lock)."""
        if self._db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is not None:
            return
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
        try:
            wal_bytes = os.path.getsize(f"{self.path}-wal")
        except OSError:
            wal_bytes = 0
        free_bytes = int(free_pages) * int(page_size)
        if max(free_bytes, wal_bytes) < RECLAIM_MIN_BYTES:
            return
        # executescript steps the pragma to the end (execute would free one page per step)
        self._db.executescript("PRAGMA incremental_vacuum;")
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        log.info(
            "outbox drained: released %d free bytes, checkpointed a %d byte WAL%s",
            free_bytes,
            wal_bytes,
            " (a reader kept it from being truncated)" if busy else "",
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for the record of processed files (one writer)."""
        with self._lock:
            yield self._db

    def put(
        self,
        *,
        message_id: str,
        topic: str,
        payload: bytes,
        processed: FileMark | None = None,
    ) -> int:
        """Commit one message (and ``processed``, the file it came from, in the same
        transaction); return how many old messages were dropped to stay in bounds."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox (message_id, topic, payload, size, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (message_id, topic, payload, len(payload), time.time()),
                )
                if processed is not None:
                    ledger.record_marks(self._db, [processed])
                dropped = self._enforce_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.notify()
        return dropped

    def _enforce_bound(self) -> int:
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()
        dropped = 0
        while total > self.max_bytes:
            row = self._db.execute("SELECT seq, size FROM outbox ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            total -= row[1]
            dropped += 1
        if dropped:
            self._db.execute(
                "INSERT INTO outbox_counters (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (dropped,),
            )
            log.warning(
                "outbox over %d bytes: dropped %d oldest message(s)", self.max_bytes, dropped
            )
        return dropped

    def pending(self, *, after_seq: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Unacknowledged messages with seq > ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, message_id, topic, payload FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            OutboxEntry(seq=r[0], message_id=r[1], topic=r[2], payload=bytes(r[3])) for r in rows
        ]

    def mark_sent(self, seq: int) -> None:
        """The broker has the message (PUBACK); it stays until the aggregator's receipt."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_at = ? WHERE seq = ?", (time.time(), seq))

    def delete(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._reclaim_if_drained()
        self.notify()

    def confirm(self, message_ids: list[str]) -> int:
        """The aggregator stored (or refused) these: delete them; return how many were here."""
        if not message_ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = 0
            for start in range(0, len(message_ids), 500):
                chunk = message_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                deleted += self._db.execute(
                    f"DELETE FROM outbox WHERE message_id IN ({marks})", chunk
                ).rowcount
            self._db.execute("COMMIT")
            if deleted:
                self._reclaim_if_drained()
        self.notify()
        return deleted

    def touch_sent(self, ts: float) -> None:
        """Restart the receipt clock of every sent message (they are being sent again)."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_at = ? WHERE sent_at IS NOT NULL", (ts,))

    def oldest_sent_at(self) -> float | None:
        """When the oldest message still waiting for a receipt was acknowledged by the broker."""
        with self._lock:
            (ts,) = self._db.execute(
                "SELECT MIN(sent_at) FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchone()
        return None if ts is None else float(ts)

    def unsent(self) -> int:
        """Messages the broker has not acknowledged yet."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(n)

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM outbox_counters WHERE name = 'dropped'"
            ).fetchone()
        return int(row[0]) if row else 0

    def oldest_age_s(self) -> float:
        """Seconds since the oldest unsent message was committed (0 when empty)."""
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
        return 0.0 if oldest is None else max(0.0, time.time() - float(oldest))

    def notify(self) -> None:
        """Wake whoever waits in :meth:`wait_changed`."""
        with self._changed:
            self._changed.notify_all()

    def wait_changed(self, timeout_s: float) -> None:
        """Block until a put or an ack happens, or ``timeout_s`` passes."""
        with self._changed:
            self._changed.wait(timeout_s)
