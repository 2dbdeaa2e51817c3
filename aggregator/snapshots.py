"""Threat snapshots on the aggregator's disk, content-addressed (``<dir>/<sha[:2]>/<sha>.jpg``);
which of them stay, and for how long, is :mod:`aggregator.retention`'s.

A snapshot is checked before it is kept (:func:`check_jpeg`): a JPEG by its magic bytes, its
header's size within bounds (read before anything is decoded), and whole by its markers (or
decodable, with ``ingest.snapshot_check: decode``). One that is not is dropped with a counted
reason; the threat is kept.

A file exists only for a stored row (:class:`PendingSnapshots`): the ingest writes the
snapshots of the messages a batch inserted as ``<sha>.jpg.tmp``, makes them durable (fsync or
syncfs, ``store.snapshot_sync``) before COMMIT, and so before the batch is acknowledged, renames
them after it, and deletes them when the batch rolls back. A duplicate, a refused message or a
rolled-back batch leaves no file; after a crash between COMMIT and the renames,
:func:`recover` finishes what a stored row refers to and deletes the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import cv2
import numpy as np

from aggregator import store
from aggregator.config import SnapshotSync
from modelrt.images import (
    ImageHeaderError,
    header_size_wh,
    image_format,
    jpeg_structure_problem,
)

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
WRITE_THREADS = 8
"""Threads that write (and, with ``file`` sync, fsync) snapshot files beside the store writer."""


class SnapshotRefused(ValueError):
    """A snapshot is not a JPEG the API can serve; ``reason`` is counted
    (``snapshot_dropped_<reason>``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def snapshot_path(snapshots_dir: Path, sha256: str) -> Path:
    """Where the snapshot with this sha256 is (or was) stored."""
    return snapshots_dir / sha256[:2] / f"{sha256}.jpg"


def check_jpeg(jpeg: bytes, *, max_side_px: int, decode: bool = False) -> None:
    """SnapshotRefused (``not_jpeg``, ``undecodable``, ``bad_dimensions``) when ``jpeg`` is not
    a snapshot to keep. The header's size is checked before anything else, as the agent's
    validation does; then the markers (:func:`modelrt.images.jpeg_structure_problem`), or with
    ``decode`` (``ingest.snapshot_check: decode``) a decode at an eighth of the size, which
    reads the whole entropy-coded stream (about 0.4 ms for a 70 KB snapshot, 1.6 ms for
    220 KB: more than the rest of the ingest of a message)."""
    if image_format(jpeg) != "jpeg":
        raise SnapshotRefused("not_jpeg", f"starts {jpeg[:8].hex()}")
    try:
        width, height = header_size_wh(jpeg, "jpeg")
    except ImageHeaderError as exc:
        raise SnapshotRefused("undecodable", exc.detail) from exc
    if not (1 <= width <= max_side_px and 1 <= height <= max_side_px):
        raise SnapshotRefused("bad_dimensions", f"{width}x{height}, at most {max_side_px} a side")
    problem = jpeg_structure_problem(jpeg)
    if problem is not None:
        raise SnapshotRefused("undecodable", problem)
    if decode:
        # An eighth of the size in grey: the whole entropy-coded stream is read, few pixels made.
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if image is None:
            raise SnapshotRefused("undecodable", "OpenCV cannot decode it")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_tmp(tmp: str, data: bytes, *, fsync: bool) -> None:
    """Create ``tmp`` with ``data``, fsynced with ``fsync`` (on a thread of the pool)."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:  # the first snapshot of its sha256[:2] folder
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2): write out everything of the filesystem that holds ``fd`` and wait for it;
    OSError for an error of the writeback since ``fd`` was opened or last synced (Linux 5.8
    and later report them)."""
    if _libc.syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"syncfs: {os.strerror(errno)}")


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _writer_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="snapshot-write")
        return _pool


class PendingSnapshots:
    """The snapshots of the messages one batch inserted, written once the rows are (see the
    module's docstring).

    A file is written as soon as its row is added (:meth:`add`), on a thread of a small pool,
    while the store writer goes on with the batch's statements; :meth:`stage` waits for them
    all before COMMIT. How they are made durable is ``sync`` (``store.snapshot_sync``):

    - ``file``: each file is fsynced by the thread that wrote it, so the fsyncs of a batch run
      concurrently and the disk's flushes serve several at once;
    - ``filesystem``: the files are only written, then one syncfs(2) of their filesystem in
      :meth:`stage` writes them all out together (and whatever else of that filesystem is
      waiting to be written: its cost depends on what else writes there)."""

    def __init__(self, snapshots_dir: Path, *, sync: SnapshotSync = "file") -> None:
        self.snapshots_dir = snapshots_dir
        self._dir = os.fspath(snapshots_dir)
        """:func:`snapshot_path` as strings: a ``Path`` made and joined three times a snapshot
        was a fifth of the store writer's time on a batch of snapshots."""
        self.sync = sync
        self._files: dict[str, bytes] = {}
        self._writes: dict[str, Future[None]] = {}
        """Every file this batch started to write, also those a savepoint rolled back."""
        self._dir_fd: int | None = None
        """``filesystem``: opened before the batch's first write, so its syncfs reports every
        writeback error since."""

    def _final(self, sha256: str) -> str:
        return f"{self._dir}/{sha256[:2]}/{sha256}.jpg"  # snapshot_path's place

    def _tmp(self, sha256: str) -> str:
        return self._final(sha256) + TMP_SUFFIX

    def add(self, sha256: str, jpeg: bytes) -> None:
        if sha256 in self._files or os.path.exists(self._final(sha256)):
            return
        self._files[sha256] = jpeg
        if sha256 in self._writes:  # written already, before a savepoint dropped it
            return
        if self.sync == "filesystem" and self._dir_fd is None:
            self.snapshots_dir.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.snapshots_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._writes[sha256] = _writer_pool().submit(
            _write_tmp, self._tmp(sha256), jpeg, fsync=self.sync == "file"
        )

    def written(self) -> list[str]:
        """The sha256s of the files this batch writes."""
        return list(self._files)

    def mark(self) -> int:
        """A point to roll back to (a message's savepoint)."""
        return len(self._files)

    def rollback_to(self, mark: int) -> None:
        for sha in list(self._files)[mark:]:
            del self._files[sha]

    def _wait(self) -> BaseException | None:
        """Wait for every write this batch started; the first error of a file it keeps."""
        wait(self._writes.values())
        for sha, future in self._writes.items():
            error = future.exception()
            if error is not None and sha in self._files:
                return error
        return None

    def stage(self) -> None:
        """Before COMMIT: every file is written as ``.tmp`` and durable, or OSError (a full
        disk) propagates and the batch rolls back. Those a savepoint rolled back are deleted."""
        error = self._wait()
        for sha in self._writes:
            if sha not in self._files:
                _unlink(self._tmp(sha))
        if error is not None:
            raise error
        if self._dir_fd is not None and self._files:
            syncfs(self._dir_fd)

    def publish(self) -> None:
        """After COMMIT: put the staged files in place (one another process on the store put
        in place first, for the same sha256, is in place already)."""
        for sha in self._files:
            tmp = self._tmp(sha)
            final = tmp.removesuffix(TMP_SUFFIX)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                if not os.path.exists(final):
                    raise
        self._done()

    def abort(self) -> None:
        """The batch rolled back: no file stays (none is written after this returns)."""
        self._wait()
        for sha in self._writes:
            _unlink(self._tmp(sha))
        self._done()

    def _done(self) -> None:
        self._writes = {}
        self._files = {}
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def recover(conn: store.Connection, snapshots_dir: Path) -> tuple[int, int]:
    """At start: staged snapshots that a stored row refers to are put in place, the others
    (a batch that never committed) deleted; returns (kept, deleted)."""
    kept = deleted = 0
    if not snapshots_dir.is_dir():
        return 0, 0
    for tmp in snapshots_dir.glob(f"*/*.jpg{TMP_SUFFIX}"):
        sha = tmp.name.removesuffix(f".jpg{TMP_SUFFIX}")
        if store.messages.snapshot_referenced(conn, sha):
            tmp.replace(tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX)))
            kept += 1
        else:
            tmp.unlink(missing_ok=True)
            deleted += 1
    if kept or deleted:
        log.info("snapshots: %d staged file(s) put in place, %d deleted", kept, deleted)
    return kept, deleted
