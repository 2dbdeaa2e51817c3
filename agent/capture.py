"""Frame sources: a folder a motion-triggered camera drops stills into, and video files.

A source yields :class:`Frame` objects and says when it is finished. Stills come as encoded
bytes (validated and decoded later); video frames come decoded. RTSP/USB cameras are in
:mod:`agent.streams` and fit the same interface.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from agent.config import (
    DirectorySourceConfig,
    RtspSourceConfig,
    UsbSourceConfig,
    VideoSourceConfig,
)
from modelrt.frames import VideoError, VideoReader

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source cannot be opened or read (missing folder, unreadable video)."""


@dataclass
class Frame:
    """One captured frame, before validation.

    ``data`` holds the file bytes of a still; ``image`` the decoded BGR pixels (h, w, 3) uint8
    of a video frame (and of a still once validated).
    """

    camera: str
    kind: Literal["file", "video"]
    source: str
    captured_at: datetime
    data: bytes | None = None
    image: np.ndarray | None = None
    frame_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    lineage_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class FrameSource(Protocol):
    """What the pipeline reads frames from."""

    camera: str

    def frames(self) -> Iterator[Frame | None]:
        """Yield frames as they come; ``None`` when nothing is ready yet (lets the caller stop)."""
        ...

    @property
    def finished(self) -> bool:
        """True once the source will never yield another frame (end of a video file)."""
        ...


IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def looks_complete(data: bytes) -> bool:
    """True when ``data`` ends the way a whole JPEG (EOI marker) or PNG (IEND chunk) ends."""
    if data.startswith(b"\xff\xd8"):
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.endswith(b"IEND\xaeB`\x82")
    return False


class DirectorySource:
    """Stills dropped into a folder, picked up in order of modification time.

    A file is taken when it is a complete JPEG/PNG, or once its size and mtime have not changed
    for ``settle_s`` (then validation decides, e.g. "truncated"). Hidden files and temp names
    (``*.tmp``, ``*.part``) are ignored, so writers that rename into place are safe.
    """

    def __init__(self, camera: str, config: DirectorySourceConfig) -> None:
        self.camera = camera
        self.config = config
        if not config.path.is_dir():
            raise SourceError(f"camera {camera}: folder {config.path} does not exist")
        self._seen: dict[str, tuple[int, int]] = {}
        self._finished = False
        self._pending: dict[str, tuple[int, int, float]] = {}
        if config.existing == "skip":
            for path in self._candidates():
                st = path.stat()
                self._seen[path.name] = (st.st_size, st.st_mtime_ns)

    @property
    def finished(self) -> bool:
        return self._finished

    def _candidates(self) -> list[Path]:
        out = []
        try:
            entries = list(os.scandir(self.config.path))
        except OSError as exc:
            raise SourceError(
                f"camera {self.camera}: cannot list {self.config.path}: {exc}"
            ) from exc
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            if any(fnmatch.fnmatch(name.lower(), p.lower()) for p in self.config.patterns):
                out.append(Path(entry.path))
        return out

    def poll(self, *, take_all: bool = False) -> list[Frame]:
        """Scan the folder once; return the frames of files that are ready, oldest first.

        ``take_all`` takes every file as it is now (a one-off read of a folder).
        """
        ready: list[tuple[int, Frame]] = []
        now = time.monotonic()
        for path in self._candidates():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._seen.get(path.name) == sig:
                continue
            first = self._pending.get(path.name)
            if first is None or first[:2] != sig:
                self._pending[path.name] = (*sig, now)
                first = self._pending[path.name]
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("camera=%s file=%s unreadable, will retry: %s", self.camera, path, exc)
                continue
            settled = take_all or now - first[2] >= self.config.settle_s
            if not (looks_complete(data) or settled):
                continue
            self._pending.pop(path.name, None)
            self._seen[path.name] = sig
            captured = datetime.fromtimestamp(st.st_mtime, UTC)
            ready.append(
                (
                    st.st_mtime_ns,
                    Frame(
                        camera=self.camera,
                        kind="file",
                        source=str(path),
                        captured_at=captured,
                        data=data,
                    ),
                )
            )
            if self.config.after == "delete":
                path.unlink(missing_ok=True)
        ready.sort(key=lambda item: item[0])
        return [frame for _, frame in ready]

    def frames(self) -> Iterator[Frame | None]:
        if not self.config.watch:
            yield from self.poll(take_all=True)
            self._finished = True
            return
        while True:
            batch = self.poll()
            if not batch:
                yield None
                time.sleep(self.config.poll_s)  # polling interval of the folder, not a sync
                continue
            yield from batch


class VideoFileSource:
    """Frames sampled at ``fps`` from a video file, time-stamped on the video's own clock.

    ``captured_at`` = the moment the file was opened + the frame's position in the video, so
    grouping by time behaves as it would have live, however fast the file is read.
    """

    def __init__(self, camera: str, config: VideoSourceConfig) -> None:
        self.camera = camera
        self.config = config
        if not config.path.is_file():
            raise SourceError(f"camera {camera}: video {config.path} does not exist")
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def frames(self) -> Iterator[Frame | None]:
        while True:
            yield from self._read_once()
            if not self.config.loop:
                self._finished = True
                return

    def _read_once(self) -> Iterator[Frame]:
        try:
            reader = VideoReader(self.config.path)
        except VideoError as exc:
            raise SourceError(f"camera {self.camera}: {exc}") from exc
        with reader:
            opened = datetime.now(UTC)
            opened_mono = time.monotonic()
            step_s = 1.0 / self.config.fps
            next_t = 0.0

            def sampled(_index: int, t_s: float) -> bool:
                nonlocal next_t
                if t_s + 1e-9 < next_t:
                    return False
                while next_t <= t_s + 1e-9:
                    next_t += step_s
                return True

            for item in reader.frames(sampled):
                if item.image is None:
                    log.warning(
                        "camera=%s video frame %d could not be decoded", self.camera, item.index
                    )
                    continue
                if self.config.realtime:
                    delay = opened_mono + item.t_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # pacing to the video clock, not a sync
                yield Frame(
                    camera=self.camera,
                    kind="video",
                    source=f"{self.config.path}#{item.index}",
                    captured_at=opened + timedelta(seconds=item.t_s),
                    image=item.image,
                )


def open_source(
    camera: str,
    config: DirectorySourceConfig | VideoSourceConfig | RtspSourceConfig | UsbSourceConfig,
    *,
    stop: threading.Event | None = None,
) -> FrameSource:
    """The source for one camera's config; ``stop`` ends live sources' reconnect waits."""
    if isinstance(config, DirectorySourceConfig):
        return DirectorySource(camera, config)
    if isinstance(config, VideoSourceConfig):
        return VideoFileSource(camera, config)
    from agent.streams import open_stream

    return open_stream(camera, config, stop=stop)
