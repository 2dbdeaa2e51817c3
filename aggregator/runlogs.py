"""The logs of any run: the agents' warnings and errors (``secagent/v1/<agent>/logs``) and
secagg's own, stored with the ids they name (agent, camera, frame, lineage, message, event,
release) in ``run_logs``, so that ``secagg logs --event 12`` and the event page show, across
agent and aggregator, everything logged about that result.

Best-effort by design (see :mod:`agent.runlogs`): a logs message is acknowledged once its lines
are queued, not stored; the queue is bounded, each agent is held to ``logs.max_lines_per_minute``
(a rogue agent cannot fill the disk), and the table keeps the newest ``logs.keep_rows`` lines.
A small writer thread of its own stores them in short transactions (SQLite serialises it with
the ingest's writer; a line is never worth holding up a threat).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from aggregator import store
from aggregator.store.logs import LogRow
from appcommon.cli import ID_KEYS
from wire.logs import parse_logs
from wire.payloads import PayloadError
from wire.topics import TopicError, Topics

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig

log = logging.getLogger(__name__)
_IDS = re.compile(r"\b(" + "|".join((*ID_KEYS, "release")) + r")=([^\s,;]+)")
WRITE_EVERY_S = 0.5
PRUNE_EVERY_S = 600.0


def row_of_record(record: logging.LogRecord) -> LogRow | None:
    """secagg's own log line as a row, when it names an id (else it is about nothing stored)."""
    msg = record.getMessage()
    ids = dict(_IDS.findall(msg))
    if not ids.keys() & {"agent", "camera", "frame", "lineage", "message", "event", "release"}:
        return None
    event, release = ids.get("event", ""), ids.get("release", "")
    return LogRow(
        id=0,
        source="secagg",
        agent_id=ids.get("agent"),
        level=record.levelname,
        logger=record.name[:128],
        msg=msg[:2000],
        at_ts=record.created,
        received_ts=record.created,
        lineage_id=ids.get("lineage"),
        frame_id=ids.get("frame"),
        camera=ids.get("camera"),
        message_id=ids.get("message"),
        event_id=int(event) if event.isdigit() and len(event) < 18 else None,
        release_id=int(release) if release.isdigit() and len(release) < 18 else None,
    )


class RunLogStore(logging.Handler):
    """Receives agents' logs messages (on the ingest's MQTT client) and secagg's own warnings
    (as a logging handler), and stores both."""

    def __init__(self, config: AggregatorConfig) -> None:
        super().__init__(level=logging.WARNING)
        self.config = config
        self.settings = config.run_logs
        self._queue: queue.Queue[LogRow] = queue.Queue(maxsize=self.settings.queue_max)
        self._budget: dict[str, tuple[float, float]] = {}  # agent -> (tokens, when)
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.stored = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="run-logs", daemon=True)
        self._client: mqtt.Client | None = None

    # MQTT (the ingest's network thread) ---------------------------------------------------
    def attach(self, client: mqtt.Client) -> str:
        """Take the logs topic's messages on ``client``; returns the topic to subscribe."""
        self._client = client
        client.message_callback_add(Topics.ALL_LOGS, self._on_logs)
        return Topics.ALL_LOGS

    def _allow(self, agent_id: str, lines: int) -> int:
        """How many of ``lines`` this agent may store now (a token bucket per agent)."""
        per_min = float(self.settings.max_lines_per_minute)
        now = time.monotonic()
        tokens, when = self._budget.get(agent_id, (per_min, now))
        tokens = min(per_min, tokens + (now - when) * per_min / 60.0)
        taken = min(lines, int(tokens))
        self._budget[agent_id] = (tokens - taken, now)
        return taken

    def _on_logs(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg.topic, bytes(msg.payload))
        finally:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)  # best-effort: queued (or refused) is enough

    def _take(self, topic: str, raw: bytes) -> None:
        try:
            agent_id = Topics.agent_of(topic)
            message = parse_logs(raw)
        except (TopicError, PayloadError) as exc:
            reason = exc.reason if isinstance(exc, PayloadError) else "bad_topic"
            self.refused[reason] += 1
            return
        if message.agent_id != agent_id:
            self.refused["agent_mismatch"] += 1
            return
        if message.dropped:
            self.dropped[f"agent:{agent_id}"] += message.dropped
        allowed = self._allow(agent_id, len(message.lines))
        self.dropped["rate"] += len(message.lines) - allowed
        now = time.time()
        for line in message.lines[:allowed]:
            self._put(
                LogRow(
                    id=0,
                    source="agent",
                    agent_id=agent_id,
                    level=line.level,
                    logger=line.logger,
                    msg=line.msg,
                    at_ts=line.at.timestamp(),
                    received_ts=now,
                    lineage_id=line.lineage_id,
                    frame_id=line.frame_id,
                    camera=line.camera,
                    message_id=line.message_id,
                    event_id=None,
                    release_id=line.release_id,
                )
            )

    def _put(self, row: LogRow) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped["queue_full"] += 1

    # secagg's own lines (any thread) -------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__ or record.name.startswith(("uvicorn", "paho")):
            return
        try:
            row = row_of_record(record)
        except Exception:
            return
        if row is not None:
            self._put(row)

    # the writer ----------------------------------------------------------------------------
    def _drain(self) -> list[LogRow]:
        rows: list[LogRow] = []
        while len(rows) < 5000:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _run(self) -> None:
        conn = store.connect(self.config.store.target)
        next_prune = time.monotonic() + 60
        try:
            while True:
                stopping = self._stop.wait(WRITE_EVERY_S)
                rows = self._drain()
                if rows:
                    try:
                        with store.transaction(conn):
                            store.logs.insert(conn, rows)
                        self.stored += len(rows)
                    except store.DatabaseError as exc:
                        self.dropped["store_error"] += len(rows)
                        log.debug("run logs not stored: %s", exc)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    try:
                        with store.transaction(conn):
                            store.logs.prune(conn, keep_rows=self.settings.keep_rows)
                    except store.DatabaseError as exc:
                        log.debug("run logs not pruned: %s", exc)
                if stopping:
                    return
        finally:
            conn.close()

    def start(self) -> None:
        logging.getLogger().addHandler(self)
        self._thread.start()

    def stop(self) -> None:
        logging.getLogger().removeHandler(self)
        self._stop.set()
        self._thread.join(timeout=10)
