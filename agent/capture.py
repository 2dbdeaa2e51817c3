"""Frame sources: the interface, video files, and the retry of a source that is missing.

A source yields :class:`Frame` objects and says when it is finished. Stills come as encoded
bytes (validated and decoded later); video frames come decoded. The folder source is in
:mod:`agent.folder`, RTSP/USB cameras in :mod:`agent.streams`; they fit the same interface.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import numpy as np

from agent.config import (
    DirectorySourceConfig,
    RtspSourceConfig,
    UsbSourceConfig,
    VideoSourceConfig,
)
from agent.ledger import FileLedger, FileMark
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
    file: FileMark | None = None
    """The file of a folder camera this still came from (remembered once processed)."""
    rejected: tuple[str, str] | None = None
    """(reason, detail) when the source already knows the entry is no still (a named pipe)."""
    recorded: bool = False
    """True once ``file`` is recorded as processed (with the frame's threat message)."""


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

    def done(self, frame: Frame) -> None:
        """The pipeline is through with ``frame`` (rejected, no motion, detected, dropped or
        failed): a folder camera remembers its file as processed."""
        ...


IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
SOURCE_MAX_CHARS = 1024
"""The wire's limit on ``frame.source``."""


def safe_text(name: str, *, limit: int = SOURCE_MAX_CHARS) -> str:
    """A file name (any bytes the file system allows) as text that is valid UTF-8 and holds no
    control character: bytes that are not UTF-8, and control or separator characters (a
    newline, an ANSI escape), are written ``\\xNN`` / ``\\uNNNN``. So the name can go on
    the wire (``frame.source``) and into a log line without forging one; at most ``limit``
    characters (a longer one ends in ``...``)."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    out = "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )
    return out if len(out) <= limit else out[: limit - 3] + "..."


def looks_complete(data: bytes) -> bool:
    """True when ``data`` ends the way a whole JPEG (EOI marker) or PNG (IEND chunk) ends."""
    if data.startswith(b"\xff\xd8"):
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.endswith(b"IEND\xaeB`\x82")
    return False


class RetryingSource:
    """A source that may be missing for a while (a share mounted late, a recording not copied
    yet): each failed attempt reports it ``down`` with the reason, and it is tried again after
    ``retry_min_s``, doubling up to ``retry_max_s``, until ``stop``.

    Subclasses implement :meth:`_attempt`: yield frames (``None`` while waiting), return when
    the source has ended, raise :class:`SourceError` when it cannot be read, and call
    :meth:`_up` once it is open.
    """

    def __init__(
        self, camera: str, *, retry_min_s: float, retry_max_s: float, stop: threading.Event | None
    ) -> None:
        self.camera = camera
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.stop = stop or threading.Event()
        self.down_reason: str | None = None
        self.failures = 0
        self.next_attempt_in_s = 0.0
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def done(self, frame: Frame) -> None:
        """The pipeline is through with ``frame`` (see :class:`FrameSource`)."""

    def _attempt(self) -> Iterator[Frame | None]:
        raise NotImplementedError

    def _up(self) -> None:
        if self.down_reason is not None and self.failures:
            log.info("camera=%s source is up again", self.camera)
        self.down_reason = None
        self.failures = 0

    def _went_down(self, reason: str) -> None:
        self.failures += 1
        self.down_reason = reason
        self.next_attempt_in_s = min(
            self.retry_max_s, self.retry_min_s * 2 ** min(self.failures - 1, 30)
        )
        log.warning(
            "camera=%s down: %s; next try in %.1f s", self.camera, reason, self.next_attempt_in_s
        )

    def frames(self) -> Iterator[Frame | None]:
        while not self.stop.is_set():
            try:
                yield from self._attempt()
            except SourceError as exc:
                self._went_down(str(exc))
            else:
                self._finished = True
                return
            yield None
            if self.stop.wait(self.next_attempt_in_s):  # the backoff, woken at once by stop
                return


class VideoFileSource(RetryingSource):
    """Frames sampled at ``fps`` from a video file, time-stamped on the video's own clock.

    ``captured_at`` = the moment the file was opened + the frame's position in the video, so
    grouping by time behaves as it would have live, however fast the file is read. A file that
    is missing or cannot be opened is reported down and tried again.
    """

    def __init__(
        self, camera: str, config: VideoSourceConfig, *, stop: threading.Event | None = None
    ) -> None:
        super().__init__(
            camera, retry_min_s=config.retry_min_s, retry_max_s=config.retry_max_s, stop=stop
        )
        self.config = config

    def _attempt(self) -> Iterator[Frame | None]:
        while not self.stop.is_set():  # a stop ends a read: never open the file again then
            yield from self._read_once()
            if not self.config.loop:
                return

    def _read_once(self) -> Iterator[Frame]:
        if not self.config.path.is_file():
            raise SourceError(f"video {self.config.path} does not exist")
        try:
            reader = VideoReader(self.config.path)
        except VideoError as exc:
            raise SourceError(str(exc)) from exc
        self._up()
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
                if self.stop.is_set():
                    return
                if item.image is None:
                    log.warning(
                        "camera=%s video frame %d could not be decoded", self.camera, item.index
                    )
                    continue
                if self.config.realtime:
                    delay = opened_mono + item.t_s - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):  # pacing to the video clock
                        return
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
    ledger: FileLedger | None = None,
    max_file_bytes: int | None = None,
) -> FrameSource:
    """The source for one camera's config; ``stop`` ends its retry and reconnect waits;
    ``ledger`` is where a folder camera remembers what it processed (default: in memory);
    a still larger than ``max_file_bytes`` is rejected unread (``validate.max_file_bytes``)."""
    if isinstance(config, DirectorySourceConfig):
        from agent.folder import DirectorySource

        return DirectorySource(
            camera, config, stop=stop, ledger=ledger, max_file_bytes=max_file_bytes
        )
    if isinstance(config, VideoSourceConfig):
        return VideoFileSource(camera, config, stop=stop)
    from agent.streams import open_stream

    return open_stream(camera, config, stop=stop)
