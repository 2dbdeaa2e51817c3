"""The systemd notify protocol (``sd_notify(3)``), without a dependency: ``KEY=value`` lines in
one datagram to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name
written with a leading ``@``).

Both daemons use it under ``Type=notify``: ``READY=1`` once they serve, ``WATCHDOG=1`` from their
main loop after a real liveness check (``WatchdogSec=``), ``STATUS=`` lines for
``systemctl status`` and ``STOPPING=1`` when they begin a clean stop. Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op, so the same code runs in a terminal or a container.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class NotifyError(OSError):
    """``$NOTIFY_SOCKET`` is set but cannot be used (bad name, or the datagram was refused)."""


def socket_address(name: str) -> str | bytes:
    """The ``AF_UNIX`` address for ``$NOTIFY_SOCKET``: ``@name`` is the abstract socket ``\\0name``
    (given as bytes), anything else must be an absolute path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if not name.startswith("/"):
        raise NotifyError(f"NOTIFY_SOCKET={name!r}: neither an absolute path nor an @abstract name")
    return name


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec=`` in seconds when systemd expects pings from this process, else None
    (``$WATCHDOG_USEC`` unset or invalid, or ``$WATCHDOG_PID`` names another process)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notify messages to systemd (or to whatever opened ``$NOTIFY_SOCKET``).

    ``watchdog`` pings at most twice per ``WatchdogSec=`` (as ``sd_watchdog_enabled(3)``
    advises), so a main loop may call :meth:`watchdog` on every turn. Errors are logged once
    and never stop the daemon: it works without systemd too.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET") or None
        self.address: str | bytes | None = socket_address(name) if name else None
        self.watchdog_s = watchdog_interval_s(env) if name else None
        self._sock: socket.socket | None = None
        self._next_ping = 0.0
        self._warned = False
        self.sent = 0

    @property
    def enabled(self) -> bool:
        """True when ``$NOTIFY_SOCKET`` was set."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines (``ready=1`` -> ``READY=1``); False when there is
        no socket or it failed (logged once)."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")  # one field per line: STATUS is one line
            lines.append(f"{key.upper()}={text}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notify socket %r: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a ``STATUS=`` line: the service is up (``Type=notify``)."""
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)

    def watchdog(self, *, now: float | None = None) -> bool:
        """``WATCHDOG=1`` when half of ``WatchdogSec=`` passed since the last ping. Call it only
        after a liveness check passed: a stuck daemon must stop pinging."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_s / 2
        return self.send(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


__all__ = ["Notifier", "NotifyError", "socket_address", "watchdog_interval_s"]
