"""Threat snapshots on the aggregator's disk, content-addressed (``<dir>/<sha[:2]>/<sha>.jpg``);
which of them stay, and for how long, is :mod:`aggregator.retention`'s.

A snapshot is checked before it is kept (:func:`check_jpeg`): a JPEG by its magic bytes, its
header's size within bounds (read before anything is decoded), and whole by its markers (or
decodable, with ``ingest.snapshot_check: decode``). One that is not is dropped with a counted
reason; the threat is kept.

A file exists only for a stored row (:class:`PendingSnapshots`): the ingest writes the
snapshots of the messages a batch inserted as ``<sha>.jpg.tmp`` before COMMIT, renames them
after it, and deletes them when the batch rolls back. A duplicate, a refused message or a
rolled-back batch leaves no file; after a crash between COMMIT and the renames,
:func:`recover` finishes what a stored row refers to and deletes the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import cv2
import numpy as np

from aggregator import store
from modelrt.images import (
    ImageHeaderError,
    header_size_wh,
    image_format,
    jpeg_structure_problem,
)

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
STAGE_GROUP = 64
"""Snapshot files written and then fsynced together (open at once, at most)."""
FSYNC_THREADS = 8
"""Threads that fsync the snapshot files of a group concurrently."""


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_fsync_pool: ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()


def _fsync_all(fds: list[int]) -> None:
    """fsync every file of ``fds`` concurrently and return when all are done; the first
    OSError is raised then (never while another fsync may still use its file)."""
    global _fsync_pool
    if len(fds) < 2:
        for fd in fds:
            os.fsync(fd)
        return
    with _fsync_pool_lock:
        if _fsync_pool is None:
            _fsync_pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="snapshot-fsync")
        pool = _fsync_pool
    futures = [pool.submit(os.fsync, fd) for fd in fds]
    wait(futures)
    for future in futures:
        future.result()


class PendingSnapshots:
    """The snapshots of the messages one batch inserted, written once the rows are (see the
    module's docstring)."""

    def __init__(self, snapshots_dir: Path) -> None:
        self.snapshots_dir = snapshots_dir
        self._files: dict[str, bytes] = {}
        self._staged: list[Path] = []

    def add(self, sha256: str, jpeg: bytes) -> None:
        if sha256 not in self._files and not snapshot_path(self.snapshots_dir, sha256).exists():
            self._files[sha256] = jpeg

    def written(self) -> list[str]:
        """The sha256s of the files this batch writes."""
        return list(self._files)

    def mark(self) -> int:
        """A point to roll back to (a message's savepoint)."""
        return len(self._files)

    def rollback_to(self, mark: int) -> None:
        for sha in list(self._files)[mark:]:
            del self._files[sha]

    def stage(self) -> None:
        """Write every file as ``.tmp`` and fsync it (before COMMIT); OSError (a full disk)
        propagates and the batch rolls back.

        The files are written STAGE_GROUP at a time and then fsynced together, each on a
        thread of a small pool (:func:`_fsync_all`): the filesystem commits the concurrent
        fsyncs together, where one after the other each waits for the disk on its own."""
        made: set[Path] = set()
        files = list(self._files.items())
        for start in range(0, len(files), STAGE_GROUP):
            fds: list[int] = []
            try:
                for sha, jpeg in files[start : start + STAGE_GROUP]:
                    final = snapshot_path(self.snapshots_dir, sha)
                    if final.parent not in made:
                        final.parent.mkdir(parents=True, exist_ok=True)
                        made.add(final.parent)
                    tmp = final.with_name(final.name + TMP_SUFFIX)
                    self._staged.append(tmp)
                    fds.append(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
                    _write_all(fds[-1], jpeg)
                _fsync_all(fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def publish(self) -> None:
        """After COMMIT: put the staged files in place (one another process on the store put
        in place first, for the same sha256, is in place already)."""
        for tmp in self._staged:
            final = tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX))
            try:
                tmp.replace(final)
            except FileNotFoundError:
                if not final.exists():
                    raise
        self._staged = []
        self._files = {}

    def abort(self) -> None:
        """The batch rolled back: no file stays."""
        for tmp in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []
        self._files = {}


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
