"""What a folder camera has processed, remembered across restarts: one row per file (camera,
path relative to the camera's folder, size, mtime). A file whose size or mtime changed since is
processed again (a camera that rewrites ``latest.jpg``).

The rows live in the outbox database (one SQLite file, one writer, see :mod:`agent.outbox`): a
frame with threats is marked processed in the same transaction that commits its message, so a
kill between the two can neither lose nor repeat it. Rows of files that are gone are pruned.
:class:`MemoryLedger` is the same without a file (a one-off read, tests, benchmarks).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_files (
    camera TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (camera, key)
) WITHOUT ROWID;
"""

Signature = tuple[int, int]
"""(size in bytes, mtime in ns) of a file as it was processed."""

CHUNK = 500
"""Rows read or written per statement: memory stays bounded however large the folder."""

_RAW = "\x00"
"""Starts a stored key that is a file name's bytes in hex (no file name holds a NUL)."""


def db_key(key: str) -> str:
    """``key`` as SQLite stores it: itself when it is valid UTF-8, else its bytes (a file name
    that is not UTF-8 decodes with surrogates, which SQLite cannot store) after a NUL."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW + os.fsencode(key).hex()
    return key


def fs_key(stored: str) -> str:
    """The key a stored one stands for (see :func:`db_key`)."""
    return os.fsdecode(bytes.fromhex(stored[1:])) if stored.startswith(_RAW) else stored


@dataclass(frozen=True)
class FileMark:
    """One file of a camera's folder as it was taken: ``key`` is its path relative to the folder
    (``/``-separated), ``size`` and ``mtime_ns`` its signature."""

    camera: str
    key: str
    size: int
    mtime_ns: int

    @property
    def signature(self) -> Signature:
        return (self.size, self.mtime_ns)


def record_marks(db: sqlite3.Connection, marks: Iterable[FileMark]) -> None:
    """Insert or update ``marks`` on ``db`` (inside the caller's transaction)."""
    db.executemany(
        "INSERT INTO processed_files (camera, key, size, mtime_ns) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(camera, key) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns",
        [(m.camera, db_key(m.key), m.size, m.mtime_ns) for m in marks],
    )


class FileLedger(Protocol):
    """Where a folder source remembers what it processed."""

    def signatures(self, camera: str, keys: list[str]) -> dict[str, Signature]:
        """The recorded signature of each of ``keys`` that has one."""
        ...

    def record(self, marks: list[FileMark]) -> None:
        """Remember ``marks`` as processed."""
        ...

    def forget(self, camera: str, keys: list[str]) -> None:
        """Drop the rows of ``keys`` (their files are gone)."""
        ...

    def keys_after(self, camera: str, after: str, limit: int) -> list[tuple[str, Signature]]:
        """Up to ``limit`` recorded (key, signature) of ``camera`` with key > ``after``, in key
        order: walks every row in bounded chunks."""
        ...


def all_rows(ledger: FileLedger, camera: str) -> Iterator[tuple[str, Signature]]:
    """Every recorded (key, signature) of ``camera``, read ``CHUNK`` rows at a time."""
    after = ""
    while True:
        rows = ledger.keys_after(camera, after, CHUNK)
        yield from rows
        if len(rows) < CHUNK:
            return
        after = rows[-1][0]


class MemoryLedger:
    """A ledger that lives as long as the process (no outbox database at hand)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Signature] = {}
        self._lock = threading.Lock()

    def signatures(self, camera: str, keys: list[str]) -> dict[str, Signature]:
        with self._lock:
            return {k: self._rows[(camera, k)] for k in keys if (camera, k) in self._rows}

    def record(self, marks: list[FileMark]) -> None:
        with self._lock:
            for m in marks:
                self._rows[(m.camera, m.key)] = m.signature

    def forget(self, camera: str, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._rows.pop((camera, k), None)

    def keys_after(self, camera: str, after: str, limit: int) -> list[tuple[str, Signature]]:
        with self._lock:
            rows = sorted((k, s) for (c, k), s in self._rows.items() if c == camera and k > after)
        return rows[:limit]


class Database(Protocol):
    """The outbox's connection, lent under its lock (see :meth:`agent.outbox.Outbox.database`),
    and the marks it holds back to write them together (:meth:`agent.outbox.Outbox.defer_marks`)."""

    def database(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def defer_marks(self, marks: list[FileMark]) -> None: ...

    def deferred_marks(self, camera: str) -> dict[str, FileMark]: ...

    def drop_deferred(self, camera: str, keys: list[str]) -> None: ...

    def flush_marks(self) -> None: ...


class SqliteLedger:
    """The ``processed_files`` table of the outbox database, and the marks the outbox holds back
    to write together (files processed without threats)."""

    def __init__(self, owner: Database) -> None:
        self._owner = owner

    def signatures(self, camera: str, keys: list[str]) -> dict[str, Signature]:
        out: dict[str, Signature] = {}
        deferred = self._owner.deferred_marks(camera)
        with self._owner.database() as db:
            for start in range(0, len(keys), CHUNK):
                chunk = [db_key(k) for k in keys[start : start + CHUNK]]
                marks = ",".join("?" * len(chunk))
                for key, size, mtime_ns in db.execute(
                    "SELECT key, size, mtime_ns FROM processed_files "
                    f"WHERE camera = ? AND key IN ({marks})",
                    (camera, *chunk),
                ):
                    out[fs_key(key)] = (int(size), int(mtime_ns))
        for key in keys:
            mark = deferred.get(key)
            if mark is not None:
                out[key] = mark.signature
        return out

    def record(self, marks: list[FileMark]) -> None:
        if marks:
            self._owner.defer_marks(marks)

    def forget(self, camera: str, keys: list[str]) -> None:
        if not keys:
            return
        self._owner.drop_deferred(camera, keys)
        with self._owner.database() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(keys), CHUNK):
                    chunk = [db_key(k) for k in keys[start : start + CHUNK]]
                    marks = ",".join("?" * len(chunk))
                    db.execute(
                        f"DELETE FROM processed_files WHERE camera = ? AND key IN ({marks})",
                        (camera, *chunk),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def keys_after(self, camera: str, after: str, limit: int) -> list[tuple[str, Signature]]:
        self._owner.flush_marks()
        with self._owner.database() as db:
            rows = db.execute(
                "SELECT key, size, mtime_ns FROM processed_files WHERE camera = ? AND key > ? "
                "ORDER BY key LIMIT ?",
                (camera, db_key(after), limit),
            ).fetchall()
        return [(fs_key(str(k)), (int(s), int(m))) for k, s, m in rows]
