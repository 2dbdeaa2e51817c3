"""A systemd notify socket that a test opens: it receives what a daemon sends to
``$NOTIFY_SOCKET`` (one datagram per call, ``KEY=value`` lines), with the time it arrived."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tests.support import wait_for


class NotifySocket:
    """``AF_UNIX`` datagram socket at ``path`` (or the abstract ``name``); messages received on
    a thread: ``(monotonic time, {KEY: value})``."""

    def __init__(self, *, path: Path | None = None, abstract: str | None = None) -> None:
        assert (path is None) != (abstract is None)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is not None:
            self.sock.bind(str(path))
            self.env_value = str(path)
        else:
            self.sock.bind(b"\0" + str(abstract).encode())
            self.env_value = f"@{abstract}"
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def env(self, *, watchdog_s: float | None = None) -> dict[str, str]:
        """The environment systemd gives a ``Type=notify`` service (with ``WatchdogSec=``)."""
        env = {**os.environ, "NOTIFY_SOCKET": self.env_value}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def received(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [
                (t, m) for t, m in self.messages if key in m and (value is None or m[key] == value)
            ]

    def wait(
        self, key: str, value: str | None = None, *, timeout_s: float = 60, after: float = 0.0
    ) -> dict[str, str]:
        """The first message with ``key`` (= ``value``) received after ``after``."""

        def found() -> dict[str, str] | None:
            hits = [m for t, m in self.received(key, value) if t >= after]
            return hits[0] if hits else None

        message = wait_for(found, timeout_s=timeout_s, what=f"{key}={value}")
        assert message is not None
        return message

    def pings(self, *, since: float = 0.0) -> list[float]:
        return [t for t, _ in self.received("WATCHDOG", "1") if t >= since]

    def statuses(self, match: Callable[[str], bool] = lambda s: True) -> list[str]:
        return [m["STATUS"] for _, m in self.received("STATUS") if match(m["STATUS"])]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
