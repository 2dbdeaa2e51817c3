"""Helpers for live-source tests: a small video file, and a thread that drains a source."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from agent.capture import Frame
from agent.streams import StreamSource


def write_clip(path: Path, frames: int = 10, *, size_wh: tuple[int, int] = (160, 120)) -> Path:
    """An MJPEG AVI of ``frames`` grey frames getting brighter, 10 fps; written to a temporary
    name and renamed, so a reader never sees half a file."""
    width, height = size_wh
    tmp = path.with_suffix(".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((height, width, 3), (20 * i) % 256, np.uint8))
    writer.release()
    tmp.replace(path)
    return path


class Reader:
    """Runs a source's ``frames()`` on a thread, collecting frames (with the monotonic time each
    arrived) and ``None`` ticks."""

    def __init__(self, source: StreamSource) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self.arrived_at: list[float] = []
        self.nones = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.source.frames():
            if item is None:
                self.nones += 1
            else:
                self.frames.append(item)
                self.arrived_at.append(time.monotonic())

    def stop(self) -> float:
        """Stop the source; return how long its thread took to end."""
        start = time.monotonic()
        self.source.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return time.monotonic() - start
