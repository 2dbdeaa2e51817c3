"""A batch's snapshots are on disk, durable, before its COMMIT and so before its ack
(:class:`PendingSnapshots`). They are written beside the store writer, on a pool's threads, as
their rows are added. With ``store.snapshot_sync: file`` each file is fsynced, the fsyncs of a
batch concurrently (the disk's flushes serve several at once); with ``filesystem`` the files
are written, then one syncfs(2) writes them all out. A failed fsync or syncfs fails the batch
with no file left and no descriptor leaked; a rolled-back batch or savepoint leaves no file, even
while its writes are still running. ``os.fsync`` and ``syncfs`` are wrapped, not replaced: every
call still reaches the disk."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from aggregator import snapshots
from aggregator.snapshots import PendingSnapshots, snapshot_path
from tests.support import wait_for

REAL_FSYNC = os.fsync


def blobs(n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        data = b"\xff\xd8" + i.to_bytes(4, "big") * 4000 + b"\xff\xd9"
        out[hashlib.sha256(data).hexdigest()] = data
    return out


def staged(pending: PendingSnapshots, files: dict[str, bytes]) -> None:
    for sha, data in files.items():
        pending.add(sha, data)
    pending.stage()


class FsyncSpy:
    """Counts the fsyncs in flight at once and the files they were for. The first call waits
    (up to a deadline) for a second one to start: called one after the other, the second can
    only start once the first gave up waiting."""

    def __init__(self, fail_inode: int | None = None) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.inodes: list[int] = []
        self.second_started = threading.Event()
        self.fail_inode = fail_inode

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            first = not self.inodes
            self.inodes.append(os.fstat(fd).st_ino)
            if not first:
                self.second_started.set()
        try:
            if first:
                self.second_started.wait(timeout=5)
            if os.fstat(fd).st_ino == self.fail_inode:
                raise OSError(errno.ENOSPC, "No space left on device")
            REAL_FSYNC(fd)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_the_fsyncs_of_a_batch_run_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy()
    monkeypatch.setattr(os, "fsync", spy)
    files = blobs(80)
    pending = PendingSnapshots(tmp_path, sync="file")
    staged(pending, files)
    assert spy.most_in_flight >= 2
    tmp_inodes = {
        (snapshot_path(tmp_path, sha).with_suffix(".jpg.tmp")).stat().st_ino for sha in files
    }
    assert sorted(spy.inodes) == sorted(tmp_inodes)  # each file fsynced, once
    pending.publish()
    for sha, data in files.items():
        assert snapshot_path(tmp_path, sha).read_bytes() == data
    assert not list(tmp_path.glob("*/*.tmp"))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("count", [1, 5])
def test_a_failed_fsync_fails_the_batch_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    files = blobs(count)
    victim = list(files)[-1]
    before = open_fds()

    def spy_for_victim(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        spy.fail_inode = os.fstat(fd).st_ino if name.startswith(victim) else spy.fail_inode
        spy(fd)

    spy = FsyncSpy()
    spy.second_started.set()  # no waiting here
    fsync: Callable[[int], None] = spy_for_victim
    monkeypatch.setattr(os, "fsync", fsync)
    pending = PendingSnapshots(tmp_path, sync="file")
    with pytest.raises(OSError) as raised:
        staged(pending, files)
    assert raised.value.errno == errno.ENOSPC
    assert open_fds() <= before  # every descriptor closed, after every fsync ended
    pending.abort()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


class SyncfsSpy:
    """``snapshots.syncfs``, noting for each call which of ``files`` were whole on disk then;
    with ``error``, the call fails with it after it reached the disk."""

    def __init__(self, snapshots_dir: Path, files: dict[str, bytes], error: int = 0) -> None:
        self.snapshots_dir = snapshots_dir
        self.files = files
        self.error = error
        self.calls: list[set[str]] = []
        self.real = snapshots.syncfs

    def whole(self) -> set[str]:
        out = set()
        for sha, data in self.files.items():
            tmp = snapshot_path(self.snapshots_dir, sha).with_suffix(".jpg.tmp")
            if tmp.exists() and tmp.read_bytes() == data:
                out.add(sha)
        return out

    def __call__(self, fd: int) -> None:
        self.calls.append(self.whole())
        self.real(fd)
        if self.error:
            raise OSError(self.error, os.strerror(self.error))


def test_with_filesystem_sync_one_syncfs_follows_every_write_and_no_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = blobs(80)
    syncfs = SyncfsSpy(tmp_path, files)
    monkeypatch.setattr(snapshots, "syncfs", syncfs)
    fsyncs = FsyncSpy()
    fsyncs.second_started.set()
    monkeypatch.setattr(os, "fsync", fsyncs)
    before = open_fds()
    pending = PendingSnapshots(tmp_path, sync="filesystem")
    staged(pending, files)
    assert syncfs.calls == [set(files)]  # one syncfs, once every file was whole
    assert fsyncs.inodes == []
    pending.publish()
    assert open_fds() <= before  # the folder's descriptor closed
    for sha, data in files.items():
        assert snapshot_path(tmp_path, sha).read_bytes() == data
    assert not list(tmp_path.glob("*/*.tmp"))


def test_a_failed_syncfs_fails_the_batch_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = blobs(5)
    monkeypatch.setattr(snapshots, "syncfs", SyncfsSpy(tmp_path, files, error=errno.EIO))
    before = open_fds()
    pending = PendingSnapshots(tmp_path, sync="filesystem")
    with pytest.raises(OSError) as raised:
        staged(pending, files)
    assert raised.value.errno == errno.EIO
    pending.abort()
    assert open_fds() <= before
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_a_savepoint_rolled_back_leaves_no_file_and_a_snapshot_added_again_is_kept(
    tmp_path: Path, sync: str
) -> None:
    """As a batch's threats stored together and then one at a time do: every file written,
    all dropped, two added again."""
    a, b, c = blobs(3).items()
    pending = PendingSnapshots(tmp_path, sync=sync)  # type: ignore[arg-type]
    mark = pending.mark()
    for sha, data in (a, b, c):
        pending.add(sha, data)
    pending.rollback_to(mark)
    pending.add(*a)
    pending.add(*c)
    assert pending.written() == [a[0], c[0]]
    pending.stage()
    pending.publish()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{sha}.jpg" for sha in (a[0], c[0])
    )


def test_abort_waits_for_the_writes_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails while its snapshots are still being written leaves none of them: abort
    waits for every write (held here before it creates its file), then deletes."""
    release = threading.Event()
    started = threading.Semaphore(0)
    order: list[str] = []
    write_tmp = snapshots._write_tmp

    def held_write(tmp: str, data: bytes, *, fsync: bool) -> None:
        started.release()
        release.wait(timeout=30)
        write_tmp(tmp, data, fsync=fsync)
        order.append("written")

    monkeypatch.setattr(snapshots, "_write_tmp", held_write)
    pending = PendingSnapshots(tmp_path, sync="file")
    for sha, data in blobs(3).items():
        pending.add(sha, data)
    for _ in range(3):
        assert started.acquire(timeout=10)

    def wait_released(*args: Any, **kwargs: Any) -> Any:
        release.set()  # the writes go on only once abort waits for them
        return futures.wait(*args, **kwargs)

    monkeypatch.setattr(snapshots, "wait", wait_released)
    pending.abort()
    order.append("aborted")
    release.set()  # (were abort not to wait)
    wait_for(lambda: len(order) == 4, timeout_s=30, what="the writes to end")
    assert order == ["written"] * 3 + ["aborted"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
