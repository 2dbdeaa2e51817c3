"""Live sources: RTSP (or HTTP MJPEG) network cameras and USB cameras, through OpenCV.

A stream is read as fast as it delivers; ``fps`` frames a second are kept. When it cannot be
opened, or breaks, or goes silent for ``read_timeout_s``, the source reports itself down (with
the reason), waits ``reconnect_min_s``, doubling after each failure up to ``reconnect_max_s``,
and reopens it. It never finishes on its own: only ``stop`` ends it. A broken camera affects no
other camera: each runs on its own thread.

OpenCV blocks inside ``VideoCapture`` calls, and its own read timeout
(``CAP_PROP_READ_TIMEOUT_MSEC``) does not end a stalled stream: on an RTSP stream that stops
sending, OpenCV 5's ``grab()`` returns True after the timeout, with a frame the decoder still
held, then again, and returns False only after two to three timeouts. So each connection has a
grabber thread that makes the blocking calls, and a ``grab()`` that took ``read_timeout_s`` or
longer is a stalled stream, whatever it returned. The source also watches the grabber: a
``grab()`` still blocked after ``read_timeout_s`` is a stall too. Either way the source reports
it down and reconnects, and ``stop`` ends it at once; an abandoned grabber releases its capture
itself when OpenCV lets go. Grabbers are not daemon threads: the process waits for them to leave
OpenCV before it exits, since a thread that returns from OpenCV while Python finalizes aborts
the process (``terminate called without an active exception``).

OpenCV opens one FFmpeg stream at a time in a process. An open that waits on a server that
accepted the connection but never answers (a hung camera) would hold up, for
``open_timeout_s``, every other camera's open: a looping video, another camera reconnecting.
So before OpenCV opens an ``rtsp://`` stream, the grabber asks the server for its OPTIONS
itself, and leaves OpenCV alone unless the server answers.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import cv2

from agent.capture import Frame
from agent.config import RtspSourceConfig, UsbSourceConfig, redact_url

log = logging.getLogger(__name__)

WAKE_S = 0.05
"""How often a waiting source looks at its stop flag and at its grabber's watchdog."""


def silent_server(url: str, *, timeout_s: float, cancel: threading.Event) -> str | None:
    """Why the RTSP server of ``url`` cannot be asked for a stream, or None when it answers an
    ``OPTIONS`` request (with anything, 401 included) within ``timeout_s``. Other schemes are
    left to OpenCV (None). The request carries no credentials."""
    parts = urlsplit(url)
    try:
        if parts.scheme.lower() != "rtsp" or not parts.hostname:
            return None
        address = (parts.hostname, parts.port or 554)
    except ValueError:  # a bad port: OpenCV will say it cannot open it
        return None
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection(address, timeout=timeout_s) as conn:
            conn.sendall(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: secagent\r\n\r\n")
            conn.settimeout(WAKE_S)
            while time.monotonic() < deadline and not cancel.is_set():
                try:
                    answer = conn.recv(16)
                except TimeoutError:
                    continue
                return None if answer else "cannot open the stream"
    except OSError:  # refused, unreachable, unknown name
        return "cannot open the stream"
    return f"cannot open the stream: no answer in {timeout_s:g} s"


def stalled(read_timeout_s: float) -> str:
    """The down reason of a stream that sent nothing for ``read_timeout_s``."""
    return f"no frame for {read_timeout_s:g} s"


@dataclass(frozen=True)
class _Opened:
    """The grabber opened the stream."""


@dataclass(frozen=True)
class _Ended:
    """The grabber is done with its connection, for ``reason``."""

    reason: str


class _Grabber(threading.Thread):
    """One connection: opens the capture, grabs every frame, decodes those due (``fps`` a
    second) and hands them over through a small queue, in order. It alone touches the capture,
    and releases it when it ends."""

    def __init__(
        self,
        open_capture: Callable[[threading.Event], cv2.VideoCapture | str],
        *,
        camera: str,
        name: str,
        fps: float,
        read_timeout_s: float,
    ) -> None:
        super().__init__(name=f"grab-{camera}", daemon=False)  # not inherited from the caller
        self.open_capture = open_capture
        self.camera = camera
        self.source_name = name
        self.fps = fps
        self.read_timeout_s = read_timeout_s
        self.handoff: queue.Queue[Frame | _Opened | _Ended] = queue.Queue(maxsize=2)
        self.quit = threading.Event()
        self.grabbing_since: float | None = None
        """monotonic time the ``grab()`` in progress began; None between grabs"""

    def run(self) -> None:
        reason = "stopped"
        cap: cv2.VideoCapture | None = None
        try:
            opened = self.open_capture(self.quit)
            if isinstance(opened, str):
                reason = opened
            else:
                cap = opened
                if self._hand(_Opened()):
                    reason = self._grab_all(cap)
        except Exception as exc:  # the source must never wait on a dead grabber
            # only the type: a message could quote the URL, credentials and all
            reason = f"reading failed: {type(exc).__name__}"
        finally:
            if cap is not None:
                cap.release()
            self._hand(_Ended(reason))

    def _grab_all(self, cap: cv2.VideoCapture) -> str:
        step_s = 1.0 / self.fps
        next_due = time.monotonic()
        index = 0
        while not self.quit.is_set():
            self.grabbing_since = started = time.monotonic()
            grabbed = cap.grab()
            self.grabbing_since = None
            now = time.monotonic()
            if now - started >= self.read_timeout_s:  # OpenCV timed out, whatever it says
                return stalled(self.read_timeout_s)
            if not grabbed:
                return "the stream ended or broke"
            index += 1
            if now < next_due:
                continue
            next_due = max(next_due + step_s, now)
            ok, image = cap.retrieve()
            if not ok or image is None:
                log.warning("camera=%s frame %d could not be decoded", self.camera, index)
                continue
            frame = Frame(
                camera=self.camera,
                kind="video",
                source=f"{self.source_name}#{index - 1}",
                captured_at=datetime.now(UTC),
                image=image,
            )
            if not self._hand(frame):
                break
        return "stopped"

    def _hand(self, item: Frame | _Opened | _Ended) -> bool:
        """Queue ``item`` for the source, waiting for room; False once told to quit."""
        while not self.quit.is_set():
            try:
                self.handoff.put(item, timeout=WAKE_S)
                return True
            except queue.Full:
                continue
        return False

    def stalled_for(self) -> float:
        """Seconds the ``grab()`` in progress has been waiting for a frame (0 when none is)."""
        since = self.grabbing_since
        return 0.0 if since is None else time.monotonic() - since


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

    def _open(self, cancel: threading.Event) -> cv2.VideoCapture | str:
        """The opened capture, or why it could not be opened."""
        if isinstance(self.target, str):
            silent = silent_server(self.target, timeout_s=self.open_timeout_s, cancel=cancel)
            if silent is not None:
                return silent
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
            return "cannot open the stream"
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

    def _came_up(self) -> None:
        self.connects += 1
        if self.down_reason is not None:
            log.info("camera=%s source=%s up", self.camera, self.name)
        self.down_reason = None
        self.failures = 0

    def frames(self) -> Iterator[Frame | None]:
        """Frames while the stream is up; ``None`` while it is down (between reconnects)."""
        while not self.stop.is_set():
            grabber = _Grabber(
                self._open,
                camera=self.camera,
                name=self.name,
                fps=self.fps,
                read_timeout_s=self.read_timeout_s,
            )
            reason = yield from self._follow(grabber)
            if self.stop.is_set():
                return
            self._went_down(reason)
            yield None
            # waiting out the backoff, but waking at once on stop
            if self.stop.wait(self.next_attempt_in_s):
                return

    def _follow(self, grabber: _Grabber) -> Generator[Frame, None, str]:
        """Yield the grabber's frames; return why its connection ended. A ``grab()`` stuck for
        ``read_timeout_s`` ends it too: the grabber is told to quit and left to let go."""
        grabber.start()
        try:
            while not self.stop.is_set():
                try:
                    item = grabber.handoff.get(timeout=WAKE_S)
                except queue.Empty:
                    if grabber.stalled_for() > self.read_timeout_s:
                        return stalled(self.read_timeout_s)
                    continue
                if isinstance(item, _Ended):
                    return item.reason
                if isinstance(item, _Opened):
                    self._came_up()
                    continue
                yield item
            return "stopped"
        finally:
            grabber.quit.set()


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
