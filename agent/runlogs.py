"""The agent's warnings and errors, sent to the aggregator with the ids they name (camera,
frame, lineage, message, release), so that what was logged about a result can be found with it
(``secagg logs``, the event page).

Best-effort, not through the outbox: a log line must never take an outbox byte from a threat,
nor delay one, and a flood of them (a camera failing every frame) must cost little. So lines
wait in a bounded queue in memory (``max_queued``), at most ``max_per_minute`` are taken (a
token bucket), and a sender thread publishes them in batches (QoS 1) while the broker is
connected. What is dropped (queue full, over the rate, lost at a restart) is counted and the
count travels in the next message (``dropped``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appcommon.cli import ID_KEYS
from wire.logs import MAX_LINES, MAX_MSG_CHARS, LogLine, LogsMessage, dump_logs

if TYPE_CHECKING:
    from agent.pipeline import Agent

log = logging.getLogger(__name__)

_IDS = re.compile(r"\b(" + "|".join((*ID_KEYS, "release")) + r")=([^\s,;]+)")
SEND_EVERY_S = 1.0


class RunLogsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="send warnings and errors to the aggregator")
    level: Literal["WARNING", "ERROR"] = Field("WARNING", description="the lowest level sent")
    max_per_minute: int = Field(
        120, ge=1, le=100_000, description="most lines sent a minute (more: dropped, counted)"
    )
    max_queued: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="most lines held while the broker is away (more: the oldest dropped)",
    )


def line_of(record: logging.LogRecord) -> LogLine:
    """A log record as a wire line, with the ids its message names."""
    msg = record.getMessage()
    ids = dict(_IDS.findall(msg))
    release = ids.get("release", "")
    return LogLine(
        at=datetime.fromtimestamp(record.created, UTC),
        level=record.levelname if record.levelname in ("ERROR", "CRITICAL") else "WARNING",
        logger=record.name[:128],
        msg=msg[:MAX_MSG_CHARS],
        camera=ids.get("camera", "")[:128] or None,
        frame_id=ids.get("frame", "")[:128] or None,
        lineage_id=ids.get("lineage", "")[:128] or None,
        message_id=ids.get("message", "")[:128] or None,
        release_id=int(release) if release.isdigit() and len(release) < 18 else None,
    )


class RunLogs(logging.Handler):
    """A logging handler (on the root logger) plus the thread that sends what it holds."""

    def __init__(self, agent: Agent, config: RunLogsConfig) -> None:
        super().__init__(level=config.level)
        self.agent = agent
        self.config = config
        self._lines: deque[LogLine] = deque()
        self._lock = threading.Lock()
        self._tokens = float(config.max_per_minute)
        self._refilled = time.monotonic()
        self.dropped = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="run-logs", daemon=True)

    # the handler ------------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__:
            return  # never about itself (a loop)
        try:
            line = line_of(record)
        except Exception:  # a record that cannot be a line is not worth a crash
            self.dropped += 1
            return
        with self._lock:
            now = time.monotonic()
            rate = self.config.max_per_minute / 60.0
            self._tokens = min(
                float(self.config.max_per_minute), self._tokens + (now - self._refilled) * rate
            )
            self._refilled = now
            if self._tokens < 1:
                self.dropped += 1
                return
            self._tokens -= 1
            if len(self._lines) >= self.config.max_queued:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(line)

    # the sender -------------------------------------------------------------------------------
    def _take(self) -> tuple[list[LogLine], int]:
        with self._lock:
            batch = [self._lines.popleft() for _ in range(min(MAX_LINES, len(self._lines)))]
            dropped, self.dropped = self.dropped, 0
        return batch, dropped

    def _send_some(self) -> None:
        link = self.agent.link
        if not link.connected.is_set():
            return
        batch, dropped = self._take()
        if not batch and not dropped:
            return
        message = LogsMessage(
            agent_id=self.agent.agent_id,
            lines=batch,
            dropped=dropped,
            sent_at=datetime.now(UTC),
        )
        info = link.client.publish(link.topics.logs, dump_logs(message), qos=1)
        if info.rc != 0:  # not queued by paho (disconnected meanwhile): counted as lost
            with self._lock:
                self.dropped += len(batch) + dropped
            return
        self.sent += len(batch)

    def _run(self) -> None:
        while not self._stop.wait(SEND_EVERY_S):
            try:
                self._send_some()
            except Exception as exc:  # best-effort: the agent goes on
                self.dropped += 1
                log.debug("sending run logs failed: %s", exc)

    def start(self) -> None:
        logging.getLogger().addHandler(self)
        self.agent.link.before_offline.append(self.flush)
        self._thread.start()

    def flush(self) -> None:
        """Send what is held (while connected): at the agent's stop, before its offline status."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            while self._lines and self.agent.link.connected.is_set():
                before = len(self._lines)
                self._send_some()
                if len(self._lines) >= before:
                    break
        except Exception as exc:
            log.debug("sending run logs at stop failed: %s", exc)

    def stop(self) -> None:
        """Detach (after :meth:`flush`, which the link's stop ran)."""
        self._stop.set()
        self._thread.join(timeout=5)
        logging.getLogger().removeHandler(self)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": self.dropped, "queued": len(self._lines)}
