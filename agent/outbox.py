"""The durable outbox: a message is committed here before it is published, marked sent when
the broker acknowledges it (PUBACK), and deleted only when the aggregator's receipt says it is
stored (so a broker crash between PUBACK and delivery loses nothing: unreceipted messages are
sent again after every reconnect). Bounded by bytes: beyond the bound the oldest messages are
dropped, counted and logged.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
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
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent_at" not in columns:  # an outbox file from before receipts
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent_at REAL")
        self._changed = threading.Condition()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, *, message_id: str, topic: str, payload: bytes) -> int:
        """Commit one message; return how many old messages were dropped to stay in bounds."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox (message_id, topic, payload, size, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (message_id, topic, payload, len(payload), time.time()),
                )
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
