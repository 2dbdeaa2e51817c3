"""Failed logins, counted per client address and per user name in a sliding window: past the
limit, logins from that address (or for that name) are refused with 429 until the oldest
failure leaves the window. In memory, per process: a restart forgets (the window is short)."""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginThrottle:
    def __init__(self, *, max_failures: int, window_s: float, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        found = self._failures.get(key)
        if found is None:
            return deque()
        while found and now - found[0] >= self.window_s:
            found.popleft()
        if not found:
            del self._failures[key]
        return found

    def wait_s(self, keys: list[str], *, now: float | None = None) -> float:
        """0 when a login may be tried now, else seconds until one may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [
                self.window_s - (now - recent[0])
                for key in keys
                if len(recent := self._recent(key, now)) >= self.max_failures
            ]
        return max(waits, default=0.0)

    def failed(self, keys: list[str], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) >= self.max_keys:  # a flood of names: forget the oldest
                for key in list(self._failures)[: self.max_keys // 10]:
                    del self._failures[key]
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                if key.startswith("user:"):
                    self._failures.pop(key, None)
