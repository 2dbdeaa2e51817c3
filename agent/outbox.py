"""The durable outbox: a message is committed here before it is published, marked sent when
the broker acknowledges it (PUBACK), and deleted only when the aggregator's receipt says it is
stored (so a broker crash between PUBACK and delivery loses nothing: unreceipted messages are
sent again after every reconnect). Bounded by bytes: beyond the bound the oldest messages are
dropped, counted and logged.

Space is given back once the queue drains: the file uses incremental auto-vacuum (an outbox
file from before is converted once, at open), and when the last message is deleted the free
pages are released, so an outage does not leave the file at its high-water size.

Durability: a rollback journal (``journal_mode=TRUNCATE``) with ``synchronous=FULL``. A commit
is in the database file itself once ``put`` returns, so neither a power cut nor a journal file
deleted by hand loses a committed message (with a write-ahead log, deleting the ``-wal`` file
after a crash loses its last commits silently). ``bench/outbox.py`` measures what this costs.

Flash wear: each byte of a message is written about once. A payload over
:data:`INLINE_MAX_BYTES` (a threat with its snapshot) is a file of its own, made durable before
its row commits and unlinked after the row is deleted (:mod:`agent.spool`), so the database
holds small rows. When the broker acknowledged a message is kept in memory, not in its row.
Deletes do not zero what they free (``secure_delete`` off). Files processed without threats are
recorded together (:meth:`Outbox.defer_marks`). ``bench/agent_writes.py`` measures the bytes
written per threat against the bytes sent.

A broken file is never fatal: at open the file is checked (``PRAGMA quick_check``); one that
fails is moved aside (``<name>.broken-<time>``, with its journal), what it held is counted if it
can still be read, and the agent starts on a fresh file. The loss is logged, kept in the new
file and reported in every status message (``outbox_lost``, the latest 100).

The same database holds the folder cameras' record of processed files (:mod:`agent.ledger`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent import ledger
from agent.ledger import FileMark
from agent.spool import Spool

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
    sent_at REAL,
    payload_file TEXT
);
CREATE TABLE IF NOT EXISTS outbox_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_losses (
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    moved_to TEXT NOT NULL,
    messages INTEGER,
    first_at REAL,
    last_at REAL
);
"""
    + ledger.SCHEMA
)

AUTO_VACUUM_INCREMENTAL = 2
RECLAIM_MIN_BYTES = 256 * 1024
"""Once drained, free pages are released when they are over this."""
JOURNAL_MODE = "TRUNCATE"
SYNCHRONOUS = "FULL"
"""A commit is on disk when ``put`` returns (``bench/outbox.py`` measures the other modes)."""
SIDE_FILES = ("-journal", "-wal", "-shm", ".d")
"""What belongs to an outbox file: its journal and WAL files, its folder of payloads."""
INLINE_MAX_BYTES = 16 * 1024
"""A payload bigger than this (a threat with its snapshot) goes to a file of its own."""
MARKS_MAX = 100
MARKS_MAX_AGE_S = 5.0
"""Processed files without threats are recorded together: this many, or this old."""


def spool_folder(path: Path) -> Path:
    """The folder of an outbox's payload files."""
    return path.with_name(path.name + ".d")


def _iso(ts: float | None) -> str:
    return "?" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    message_id: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class OutboxLoss:
    """A broken outbox file set aside at start, and what it held (None: unreadable)."""

    at: float
    reason: str
    moved_to: str
    messages: int | None = None
    first_at: float | None = None
    last_at: float | None = None


def check_file(path: Path) -> str | None:
    """What is wrong with the outbox file at ``path`` (``PRAGMA quick_check``), None if nothing
    (or no file yet)."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}"
    found = [str(r[0]) for r in rows]
    return None if found == ["ok"] else "quick_check: " + "; ".join(found[:5])


def _held(path: Path) -> tuple[int | None, float | None, float | None, bool]:
    """(messages, first, last commit time, whole count) of a broken outbox, as far as it can be
    read: all of it, else the rows before the damage (a lower bound), else nothing."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return None, None, None, False
    try:
        try:
            count, first, last = db.execute(
                "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM outbox"
            ).fetchone()
            return int(count), first, last, True
        except sqlite3.DatabaseError:
            pass
        times: list[float] = []
        try:
            for (created,) in db.execute("SELECT created_at FROM outbox"):
                times.append(float(created))
        except sqlite3.DatabaseError:
            pass
        if not times:
            return None, None, None, False
        return len(times), min(times), max(times), False
    finally:
        db.close()


def set_aside(path: Path, reason: str) -> OutboxLoss:
    """Move a broken outbox file (and its journal) aside; what it held, if readable."""
    now = time.time()
    messages, first, last, whole = _held(path)
    if messages is not None and not whole:
        reason = f"at least {messages} message(s) read before the damage; {reason}"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    moved = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in ("", *SIDE_FILES):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.replace(Path(f"{moved}{suffix}"))
    return OutboxLoss(
        at=now,
        reason=reason[:500],
        moved_to=str(moved),
        messages=messages,
        first_at=first,
        last_at=last,
    )


class Outbox:
    """SQLite outbox shared by the pipeline (put) and the publisher (pending, ack)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        problem = check_file(path)
        loss = set_aside(path, problem) if problem is not None else None
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._incremental_vacuum()
        self._db.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")
        self._db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        # What is deleted here is forgotten, not secret: zeroing it (Debian's default) doubled
        # what a delete wrote.
        self._db.execute("PRAGMA secure_delete=OFF")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent_at" not in columns:  # an outbox file from before receipts
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent_at REAL")
        if "payload_file" not in columns:  # an outbox file from before payload files
            self._db.execute("ALTER TABLE outbox ADD COLUMN payload_file TEXT")
        self.spool = Spool(spool_folder(path))
        known = {
            str(r[0])
            for r in self._db.execute(
                "SELECT payload_file FROM outbox WHERE payload_file IS NOT NULL"
            )
        }
        self.spool.sweep(known)
        if loss is not None:
            self._db.execute(
                "INSERT INTO outbox_losses (at, reason, moved_to, messages, first_at, last_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (loss.at, loss.reason, loss.moved_to, loss.messages, loss.first_at, loss.last_at),
            )
            log.error(
                "outbox %s was broken (%s): moved to %s; %s message(s) lost%s; started a fresh one",
                path,
                loss.reason,
                loss.moved_to,
                "an unknown number of" if loss.messages is None else loss.messages,
                ""
                if loss.first_at is None
                else f", committed {_iso(loss.first_at)} to {_iso(loss.last_at)}",
            )
        self._changed = threading.Condition()
        self._sent: dict[int, float] = {}
        """seq -> when the broker acknowledged it (this process's; all go out again after a
        restart anyway), kept in memory: a row rewritten for it cost a whole payload."""
        self._marks: dict[tuple[str, str], FileMark] = {}
        self._marks_since: float | None = None

    def losses(self) -> list[OutboxLoss]:
        """Broken outbox files set aside at start (this file's record), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, reason, moved_to, messages, first_at, last_at FROM outbox_losses "
                "ORDER BY at"
            ).fetchall()
        return [OutboxLoss(*r) for r in rows][-100:]

    def losses_wire(self) -> list[dict[str, object]]:
        """:meth:`losses` in the status message's form (``outbox_lost``)."""

        def iso(ts: float | None) -> str | None:
            return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

        return [
            {
                "at": iso(loss.at),
                "reason": loss.reason[:500],
                "moved_to": loss.moved_to[:1024],
                "messages": loss.messages,
                "first_at": iso(loss.first_at),
                "last_at": iso(loss.last_at),
            }
            for loss in self.losses()
        ]

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
        """The queue is empty: release free pages when worth it (holding
        the lock)."""
        if self._db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is not None:
            return
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
        free_bytes = int(free_pages) * int(page_size)
        if free_bytes < RECLAIM_MIN_BYTES:
            return
        # executescript steps the pragma to the end (execute would free one page per step)
        self._db.executescript("PRAGMA incremental_vacuum;")
        log.info("outbox drained: released %d free bytes", free_bytes)

    def close(self) -> None:
        with self._lock:
            self._flush_marks()
            self._db.close()

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for the record of processed files (one writer)."""
        with self._lock:
            yield self._db

    # the record of processed files, deferred ------------------------------------------------
    def defer_marks(self, marks: list[FileMark]) -> None:
        """Remember files processed without threats; they are written with the next message
        or the next :data:`MARKS_MAX` of them, at the latest :data:`MARKS_MAX_AGE_S` later
        when more come, and at close (a transaction each cost about 40 KB of writes). What a
        crash loses of them is processed again after the restart, without threats again."""
        with self._lock:
            for m in marks:
                self._marks[(m.camera, m.key)] = m
            now = time.monotonic()
            if self._marks_since is None:
                self._marks_since = now
            if len(self._marks) >= MARKS_MAX or now - self._marks_since >= MARKS_MAX_AGE_S:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._flush_marks()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def deferred_marks(self, camera: str) -> dict[str, FileMark]:
        """The marks of ``camera`` not written yet, by key."""
        with self._lock:
            return {k: m for (c, k), m in self._marks.items() if c == camera}

    def drop_deferred(self, camera: str, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._marks.pop((camera, key), None)

    def flush_marks(self) -> None:
        """Write the deferred marks now."""
        with self._lock:
            if self._marks:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._flush_marks()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def _flush_marks(self) -> None:
        """Write the deferred marks in the open transaction (holding the lock)."""
        if self._marks:
            ledger.record_marks(self._db, list(self._marks.values()))
        self._marks.clear()
        self._marks_since = None

    # messages --------------------------------------------------------------------------------
    def put(
        self,
        *,
        message_id: str,
        topic: str,
        payload: bytes,
        processed: FileMark | None = None,
    ) -> int:
        """Commit one message (and ``processed``, the file it came from, in the same
        transaction, with the marks deferred so far); return how many old messages were
        dropped to stay in bounds. A payload over :data:`INLINE_MAX_BYTES` is written to a file
        of its own first (:mod:`agent.spool`)."""
        name: str | None = None
        if len(payload) > INLINE_MAX_BYTES:
            name = Spool.name_of(message_id)
            self.spool.write(name, payload)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO outbox (message_id, topic, payload, size, created_at, "
                    "payload_file) VALUES (?, ?, ?, ?, ?, ?)",
                    (message_id, topic, b"" if name else payload, len(payload), time.time(), name),
                )
                if processed is not None:
                    self._marks.pop((processed.camera, processed.key), None)
                    ledger.record_marks(self._db, [processed])
                self._flush_marks()
                dropped, files = self._enforce_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                if name is not None:
                    self.spool.remove([name])
                raise
        self.spool.remove(files)
        self.notify()
        return dropped

    def _enforce_bound(self) -> tuple[int, list[str]]:
        """Drop the oldest messages beyond the bound (holding the lock, in the transaction);
        returns how many, and their payload files (to unlink after the commit)."""
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()
        dropped: list[int] = []
        files: list[str] = []
        while total > self.max_bytes:
            row = self._db.execute(
                "SELECT seq, size, payload_file FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            total -= row[1]
            dropped.append(row[0])
            if row[2]:
                files.append(row[2])
        if dropped:
            for seq in dropped:
                self._sent.pop(seq, None)
            self._count("dropped", len(dropped))
            log.warning(
                "outbox over %d bytes: dropped %d oldest message(s)", self.max_bytes, len(dropped)
            )
        return len(dropped), files

    def _count(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO outbox_counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def pending(self, *, after_seq: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Unacknowledged messages with seq > ``after_seq``, oldest first. A message whose
        payload file is gone (deleted by hand) is dropped, counted and logged."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, message_id, topic, payload, payload_file FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        entries: list[OutboxEntry] = []
        lost: list[int] = []
        for seq, message_id, topic, payload, name in rows:
            body = bytes(payload) if name is None else self.spool.read(name)
            if body is None:
                log.error("outbox message=%s lost: its payload file %s is gone", message_id, name)
                lost.append(seq)
                continue
            entries.append(OutboxEntry(seq=seq, message_id=message_id, topic=topic, payload=body))
        if lost:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(lost))
                self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", lost)
                self._count("dropped", len(lost))
                self._db.execute("COMMIT")
        return entries

    def mark_sent(self, seq: int) -> None:
        """The broker has the message (PUBACK); it stays until the aggregator's receipt."""
        with self._lock:
            self._sent[seq] = time.time()

    def _delete(self, where: str, args: Sequence[object]) -> int:
        """Delete the rows ``where`` says in a transaction, then their payload files (holding
        the lock); how many rows."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute(
                f"DELETE FROM outbox WHERE {where} RETURNING seq, payload_file", args
            ).fetchall()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for seq, _ in rows:
            self._sent.pop(seq, None)
        self.spool.remove(name for _, name in rows if name)
        return len(rows)

    def delete(self, seq: int) -> None:
        with self._lock:
            self._delete("seq = ?", [seq])
            self._reclaim_if_drained()
        self.notify()

    def confirm(self, message_ids: list[str]) -> int:
        """The aggregator stored (or refused) these: delete them; return how many were here."""
        if not message_ids:
            return 0
        deleted = 0
        with self._lock:
            for start in range(0, len(message_ids), 500):
                chunk = list(message_ids[start : start + 500])
                deleted += self._delete(f"message_id IN ({','.join('?' * len(chunk))})", chunk)
            if deleted:
                self._reclaim_if_drained()
        self.notify()
        return deleted

    def touch_sent(self, ts: float) -> None:
        """Restart the receipt clock of every sent message (they are being sent again)."""
        with self._lock:
            self._sent = dict.fromkeys(self._sent, ts)

    def oldest_sent_at(self) -> float | None:
        """When the oldest message still waiting for a receipt was acknowledged by the broker."""
        with self._lock:
            return min(self._sent.values(), default=None)

    def unsent(self) -> int:
        """Messages the broker has not acknowledged yet."""
        return max(0, self.depth() - len(self._sent))

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
