"""A real RTSP camera for the tests: GStreamer's RTSP server (``rtsp_server.py``, run by the
system Python, which has the GObject bindings the virtualenv lacks) serving a live H.264 test
pattern on a free loopback port. A test can kill it (SIGKILL) and start it again on the same
port, or stall it (SIGSTOP: the TCP connection stays open, nothing more is sent)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from demo.broker import free_port
from tests.support import wait_for

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SETUP_HINT = (
    "the RTSP tests need GStreamer's RTSP server for the system Python: run `make setup` "
    "(it installs the Debian packages python3-gst-1.0, gir1.2-gst-rtsp-server-1.0, "
    "gstreamer1.0-plugins-{base,good,ugly})"
)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RtspServer:
    """A live ``width``x``height`` H.264 stream at ``rtsp://[user:password@]127.0.0.1:port/cam``.

    ``fps`` 25 and a keyframe every ``key_int`` frames: FFmpeg probes about 30 frames before it
    opens a stream, so a higher rate opens faster (about 1.2 s at 25 fps, 3 s at 10 fps)."""

    def __init__(
        self,
        workdir: Path,
        *,
        credentials: tuple[str, str] | None = None,
        mount: str = "/cam",
        size_wh: tuple[int, int] = (320, 240),
        fps: int = 25,
        key_int: int = 5,
        port: int | None = None,
    ) -> None:
        if not SYSTEM_PYTHON.exists():
            raise RuntimeError(f"{SYSTEM_PYTHON} is missing; {SETUP_HINT}")
        self.workdir = workdir
        self.credentials = credentials
        self.mount = mount
        self.size_wh = size_wh
        self.fps = fps
        self.key_int = key_int
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stalled = False

    @property
    def url(self) -> str:
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{self.mount}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"rtsp-server.{self.starts}.log"

    def start(self, *, timeout_s: float = 30) -> RtspServer:
        """Start serving (again, on the same port); return once it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        width, height = self.size_wh
        command = [
            str(SYSTEM_PYTHON),
            str(SERVER_SCRIPT),
            f"--port={self.port}",
            f"--mount={self.mount}",
            f"--width={width}",
            f"--height={height}",
            f"--fps={self.fps}",
            f"--key-int={self.key_int}",
        ]
        if self.credentials is not None:
            command += [f"--user={self.credentials[0]}", f"--password={self.credentials[1]}"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.stalled = False
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the RTSP server exited ({proc.returncode}): "
                    f"{self.log_path.read_text()[-2000:]}\n{SETUP_HINT}"
                )
            return "ready" in self.log_path.read_text() and _accepts(self.port)

        wait_for(listening, timeout_s=timeout_s, what=f"the RTSP server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: the connection is cut, as when a camera loses power."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.stalled = False

    def stall(self) -> None:
        """SIGSTOP: the connection stays open but no packet comes any more."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stalled = True

    def resume(self) -> None:
        """SIGCONT after :meth:`stall`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stalled = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
