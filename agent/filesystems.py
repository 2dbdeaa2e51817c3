"""What the folder source needs to know about file systems: which one holds a folder (a
network share, whose remote writes inotify never sees), and what a directory entry is."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

NETWORK_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ncpfs",
        "davfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.davfs2",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.gcsfuse",
    }
)
"""File systems whose remote writes inotify never sees: ``watch_mode: auto`` polls them."""


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The file system type of the mount holding ``path``, from ``/proc/self/mountinfo``
    (or the ``mountinfo`` text given); None when unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[int, str | None] = (-1, None)
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            best = (len(point), tail[0])
    return best[1]


def entry_kind(mode: int) -> str:
    """What a directory entry is, in words, from its ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"
