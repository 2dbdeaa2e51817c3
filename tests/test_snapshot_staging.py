"""A batch's snapshots are on disk, fsynced, before its COMMIT (:class:`PendingSnapshots`): the
fsyncs of a batch run concurrently (the filesystem commits them together instead of waiting
for the disk once a file), each file is fsynced, and a failed fsync fails the batch with no
file left and no descriptor leaked. ``os.fsync`` is wrapped, not replaced: every call still
reaches the disk."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.snapshots import PendingSnapshots, snapshot_path

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
    files = blobs(80)  # more than one group (STAGE_GROUP)
    pending = PendingSnapshots(tmp_path)
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
    pending = PendingSnapshots(tmp_path)
    for sha, data in files.items():
        pending.add(sha, data)
    before = open_fds()

    def spy_for_victim(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        spy.fail_inode = os.fstat(fd).st_ino if name.startswith(victim) else spy.fail_inode
        spy(fd)

    spy = FsyncSpy()
    spy.second_started.set()  # no waiting here
    fsync: Callable[[int], None] = spy_for_victim
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as raised:
        pending.stage()
    assert raised.value.errno == errno.ENOSPC
    assert open_fds() <= before  # every descriptor closed, after every fsync ended
    pending.abort()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
