"""The cost of picking up a new still in a folder that keeps 20,000 files: inotify (the default)
vs the polling scan (the seed's method, now the fallback for network shares), side by side.

A folder gets ``--files`` small JPEGs, all already processed. Then, for each watch mode, the
real :class:`agent.folder.DirectorySource` (ledger in memory) picks up ``--new`` files written
one at a time. Measured in CPU time of the whole process (``time.process_time``, the watcher's
own thread included):

- polling: one scan of the folder, the least a new file costs; a scan runs every ``poll_s``
  whether a file came or not, so at the default 5 scans a second the watcher takes
  5 x scan of a core all the time;
- inotify: from writing the file to its frame coming out, and the CPU spent idle per second.

    python bench/folder_watch.py [--files 20000] [--new 50]

The last line: CPU per pickup for both and their ratio, and the idle cost of both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import DirectorySourceConfig  # noqa: E402
from agent.filesystems import filesystem_type  # noqa: E402
from agent.folder import DirectorySource  # noqa: E402


def source(folder: Path, mode: str) -> DirectorySource:
    config = DirectorySourceConfig.model_validate(
        {"type": "directory", "path": folder, "watch_mode": mode, "existing": "skip"}
    )
    return DirectorySource("bench", config)


def poll_cost(folder: Path, jpeg: bytes, new: int) -> tuple[float, float]:
    """(median CPU ms of a scan that finds a new file, median CPU ms of an idle scan)."""
    src = source(folder, "poll")
    src.poll()  # the first scan loads what is known
    found_ms, idle_ms = [], []
    for i in range(new):
        start = time.process_time()
        assert src.poll() == []
        idle_ms.append((time.process_time() - start) * 1000)
        (folder / f"poll-{i:04d}.jpg").write_bytes(jpeg)
        cpu = time.process_time()
        frames = src.poll()
        found_ms.append((time.process_time() - cpu) * 1000)
        assert len(frames) == 1, frames
    return statistics.median(found_ms), statistics.median(idle_ms)


def inotify_cost(folder: Path, jpeg: bytes, new: int) -> tuple[float, float, float]:
    """(median CPU ms per pickup, median wall ms per pickup, CPU ms per second idle)."""
    src = source(folder, "inotify")
    frames = src.frames()
    next(frames)  # watching, the folder scanned once at start
    assert src.mode == "inotify", src.mode
    cpu_ms, wall_ms = [], []
    for i in range(new):
        while next(frames) is not None:  # drain
            pass
        cpu, wall = time.process_time(), time.perf_counter()
        (folder / f"inotify-{i:04d}.jpg").write_bytes(jpeg)
        frame = next(frames)
        while frame is None:
            frame = next(frames)
        cpu_ms.append((time.process_time() - cpu) * 1000)
        wall_ms.append((time.perf_counter() - wall) * 1000)
        src.done(frame)
    idle_cpu, idle_wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - idle_wall < 5.0:
        assert next(frames) is None
    idle = (time.process_time() - idle_cpu) * 1000 / (time.perf_counter() - idle_wall)
    src.stop.set()
    for _ in frames:
        pass
    return statistics.median(cpu_ms), statistics.median(wall_ms), idle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--new", type=int, default=50)
    args = parser.parse_args()
    jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").is_dir() else None) as tmp:
        folder = Path(tmp)
        for i in range(args.files):
            (folder / f"kept-{i:06d}.jpg").write_bytes(jpeg)
        print(
            f"machine: {os.cpu_count()} cores {platform.machine()}, "
            f"{filesystem_type(folder)} file system; {args.files} files kept, "
            f"{args.new} new files picked up one at a time per mode"
        )
        poll_ms, poll_idle_ms = poll_cost(folder, jpeg, args.new)
        ino_ms, ino_wall_ms, ino_idle = inotify_cost(folder, jpeg, args.new)
    poll_s = DirectorySourceConfig.model_fields["poll_s"].default
    per_s = 1 / poll_s
    print(
        f"polling: {poll_ms:.1f} ms CPU per scan that finds the file ({poll_idle_ms:.1f} ms per "
        f"idle scan); at {per_s:.0f} scans/s: {per_s * poll_idle_ms / 10:.1f}% of a core idle, "
        f"pickup within {poll_s * 1000:.0f} ms"
    )
    print(
        f"inotify: {ino_ms:.2f} ms CPU per pickup, picked up {ino_wall_ms:.0f} ms after the "
        f"write (medians); idle: {ino_idle / 10:.2f}% of a core"
    )
    print(
        f"CPU per new file: polling {poll_ms:.1f} ms, inotify {ino_ms:.2f} ms, ratio "
        f"{ino_ms / poll_ms:.4f} ({poll_ms / ino_ms:.0f}x less); idle: polling "
        f"{per_s * poll_idle_ms / 10:.1f}% of a core, inotify {ino_idle / 10:.2f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
