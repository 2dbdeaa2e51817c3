"""Live sources: RTSP (or HTTP MJPEG) network cameras and USB cameras, through OpenCV.

A stream is read as fast as it delivers; ``fps`` frames a second are kept. When it cannot be
opened, or breaks, or goes silent for ``read_timeout_s``, the source reports itself down (with
the reason), waits ``reconnect_min_s``, doubling after each failure up to ``reconnect_max_s``,
and reopens it. It never finishes on its own: only ``stop`` ends it. A broken camera affects no
other camera: each runs on its own thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import cv2

from agent.capture import Frame
from agent.config import RtspSourceConfig, UsbSourceConfig

log = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://***@host/x``: URLs go into logs and messages."""
    return _CREDENTIALS.sub(r"\1***@", url)


class StreamSource:
    """Frames from ``target`` (a URL, a file OpenCV reads, or a USB device index or path)."""

    live = True

    def __init__(
        self,
        camera: str,
        *,
        target: str | int,
        fps: float,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        capture_size_wh: tuple[int | None, int | None] = (None, None),
        stop: threading.Event | None = None,
    ) -> None:
        self.camera = camera
        self.target = target
        self.name = redact_url(target) if isinstance(target, str) else f"usb:{target}"
        self.fps = fps
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.capture_size_wh = capture_size_wh
        self.stop = stop or threading.Event()
        self.down_reason: str | None = "not opened yet"
        self.connects = 0
        self.failures = 0
        self.next_attempt_in_s = 0.0

    @property
    def finished(self) -> bool:
        return self.stop.is_set()

    def done(self, frame: Frame) -> None:
        """Nothing to remember of a live frame."""

    def _open(self) -> cv2.VideoCapture | None:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.read_timeout_s * 1000),
        ]
        if isinstance(self.target, int) or self.target.startswith("/dev/"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
            width, height = self.capture_size_wh
            if cap.isOpened() and width and height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        else:
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _went_down(self, reason: str) -> None:
        self.failures += 1
        self.down_reason = reason
        self.next_attempt_in_s = min(
            self.reconnect_max_s, self.reconnect_min_s * 2 ** min(self.failures - 1, 30)
        )
        log.warning(
            "camera=%s source=%s down: %s; next try in %.1f s",
            self.camera,
            self.name,
            reason,
            self.next_attempt_in_s,
        )

    def frames(self) -> Iterator[Frame | None]:
        """Frames while the stream is up; ``None`` while it is down (between reconnects)."""
        while not self.stop.is_set():
            cap = self._open()
            if cap is None:
                self._went_down("cannot open the stream")
            else:
                self.connects += 1
                if self.down_reason is not None:
                    log.info("camera=%s source=%s up", self.camera, self.name)
                self.down_reason = None
                self.failures = 0
                try:
                    yield from self._read(cap)
                finally:
                    cap.release()
                if self.stop.is_set():
                    return
                self._went_down("the stream ended or broke")
            yield None
            # waiting out the backoff, but waking at once on stop
            if self.stop.wait(self.next_attempt_in_s):
                return

    def _read(self, cap: cv2.VideoCapture) -> Iterator[Frame]:
        step_s = 1.0 / self.fps
        next_due = time.monotonic()
        index = 0
        while not self.stop.is_set():
            if not cap.grab():
                return
            index += 1
            now = time.monotonic()
            if now < next_due:
                continue
            next_due = max(next_due + step_s, now)
            ok, image = cap.retrieve()
            if not ok or image is None:
                log.warning("camera=%s frame %d could not be decoded", self.camera, index)
                continue
            yield Frame(
                camera=self.camera,
                kind="video",
                source=f"{self.name}#{index - 1}",
                captured_at=datetime.now(UTC),
                image=image,
            )


def open_stream(
    camera: str, config: RtspSourceConfig | UsbSourceConfig, *, stop: threading.Event | None
) -> StreamSource:
    """The live source of an ``rtsp`` or ``usb`` camera config."""
    common = {
        "fps": config.fps,
        "open_timeout_s": config.open_timeout_s,
        "read_timeout_s": config.read_timeout_s,
        "reconnect_min_s": config.reconnect_min_s,
        "reconnect_max_s": config.reconnect_max_s,
        "stop": stop,
    }
    if isinstance(config, RtspSourceConfig):
        return StreamSource(camera, target=config.url, **common)  # type: ignore[arg-type]
    return StreamSource(
        camera,
        target=config.device,
        capture_size_wh=(config.width, config.height),
        **common,  # type: ignore[arg-type]
    )
