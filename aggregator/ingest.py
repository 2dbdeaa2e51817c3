"""MQTT ingest: every message is validated and stored, and only then acknowledged to the broker
(paho ``manual_ack``). The session is persistent (fixed client id, no clean start, a session
expiry), so what arrives while the aggregator is down waits at the broker; a message whose id is
already stored is acknowledged and ignored.

One writer thread owns the database. It takes the messages waiting in its queue (up to
``batch_max``) and stores them in one transaction, each inside a savepoint so one bad message
cannot undo the others; after COMMIT it acknowledges them and publishes the event changes.
The notifications those changes call for are decided in the same transaction; a sender thread
sends them afterwards (:mod:`aggregator.notify`).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator import events, notify, records, snapshots, store
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from wire.payloads import PayloadError, ReceiptMessage, Refusal, dump_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0
"""How often snapshot retention runs (when ``store.snapshot_retention_days`` is set)."""


def message_id_of(payload: bytes) -> str | None:
    """The message id of a refused threat payload, if one can be read from it at all."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    mid = doc.get("message_id") if isinstance(doc, dict) else None
    return mid if isinstance(mid, str) and re.fullmatch(r"[0-9a-f]{32}", mid) else None


@dataclass
class IngestStats:
    """Counters since start, updated after each commit (persistent ones: ``ingest_counters``)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0


class Ingest:
    """The MQTT side of ``secagg``: one paho client, one writer thread owning the database."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.stats = IngestStats()
        self.connected = threading.Event()
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(
            maxsize=config.ingest.queue_max
        )
        self._stop = threading.Event()
        self._last_reject_log: dict[str, float] = {}
        self.grouping = events.Grouping.from_config(config.events)
        self.sender = notify.NotificationSender(config) if config.notify.notifiers else None
        self._next_prune = 0.0
        self.beat = time.monotonic()
        """When the writer thread last turned its loop (the watchdog's liveness check)."""
        store.migrate(config.store.path)
        self._conn = store.connect(config.store.path)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.mqtt.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.mqtt.username:
            client.username_pw_set(config.mqtt.username, config.mqtt.password)
        if config.mqtt.tls_ca_file:
            client.tls_set(ca_certs=str(config.mqtt.tls_ca_file))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)

    # paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the aggregator: %s",
                self.config.mqtt.host,
                self.config.mqtt.port,
                reason_code,
            )
            return
        log.info(
            "connected to broker %s:%d (session present: %s)",
            self.config.mqtt.host,
            self.config.mqtt.port,
            flags.session_present,
        )
        client.subscribe([(Topics.ALL_THREATS, 1), (Topics.ALL_STATUS, 1)])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[mqtt.ReasonCode],
        properties: object,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused the subscriptions: %s", ", ".join(failed))
            return
        self.connected.set()  # connected *and* subscribed: nothing published from now is missed

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("disconnected from broker: %s (will reconnect)", reason_code)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(msg)  # blocks the network thread when the writer is far behind

    # writer thread ---------------------------------------------------------------------------
    def _take_batch(self, timeout_s: float) -> list[mqtt.MQTTMessage]:
        try:
            first = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [] if first is None else [first]
        while len(batch) < self.config.ingest.batch_max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is not None:
                batch.append(more)
        return batch

    def _write_loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            self.beat = time.monotonic()
            stopping = self._stop.is_set()
            # On stop, store what is already in hand (received), then end; what arrives later
            # stays unacknowledged and the broker delivers it again after a restart.
            batch = self._take_batch(0.0 if stopping else max(0.0, next_sweep - self.beat))
            if stopping and not batch:
                return
            if batch:
                try:
                    self._write_batch(batch)
                except Exception:
                    # Nothing of the batch was committed or acked: the broker redelivers it.
                    log.exception("a batch of %d message(s) could not be stored", len(batch))
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.config.events.sweep_interval_s

    def _write_batch(self, batch: list[mqtt.MQTTMessage]) -> None:
        done: list[mqtt.MQTTMessage] = []
        changes: list[EventChange] = []
        counts: Counter[str] = Counter()
        rejects: list[tuple[mqtt.MQTTMessage, PayloadError]] = []
        receipts: dict[str, list[str]] = defaultdict(list)
        stored: list[records.Outcome] = []
        with store.transaction(self._conn) as conn:
            for msg in batch:
                conn.execute("SAVEPOINT message")
                try:
                    outcome = self._record(conn, msg)
                except PayloadError as exc:
                    conn.execute("ROLLBACK TO message")
                    counts[f"rejected_{exc.reason}"] += 1
                    rejects.append((msg, exc))
                    done.append(msg)
                except Exception:
                    conn.execute("ROLLBACK TO message")
                    log.exception(
                        "topic=%s mid=%d could not be stored; left unacknowledged",
                        msg.topic,
                        msg.mid,
                    )
                else:
                    counts[outcome.kind] += 1
                    changes += outcome.changes
                    done.append(msg)
                    if outcome.message_id is not None:
                        receipts[outcome.agent_id].append(outcome.message_id)
                    if outcome.kind == "stored":
                        stored.append(outcome)
                conn.execute("RELEASE message")
            for name, value in counts.items():
                store.bump_counter(conn, name, value)
            due = notify.on_changes(conn, changes, self.config, now_ts=time.time())
        if due and self.sender is not None:
            self.sender.wake()
        for o in stored:
            log.info(
                "stored message=%s agent=%s camera=%s lineage=%s threats=%d",
                o.message_id,
                o.agent_id,
                o.camera,
                o.lineage_id,
                o.threats,
            )
        # Committed: now, and only now, the broker and the agents may forget these messages.
        for msg in done:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
        self._send_receipts(receipts, rejects)
        self._count(len(batch), counts, rejects)
        self._publish_changes(changes)

    def _send_receipts(
        self, receipts: dict[str, list[str]], rejects: list[tuple[mqtt.MQTTMessage, PayloadError]]
    ) -> None:
        refused: dict[str, list[Refusal]] = defaultdict(list)
        for msg, exc in rejects:
            mid = message_id_of(bytes(msg.payload)) if msg.topic.endswith("/threats") else None
            if mid is None:
                continue
            try:
                refused[Topics.agent_of(msg.topic)].append(
                    Refusal(message_id=mid, reason=exc.reason)
                )
            except TopicError:
                continue
        for agent_id in receipts.keys() | refused.keys():
            receipt = ReceiptMessage.model_validate(
                {
                    "agent_id": agent_id,
                    "stored": receipts.get(agent_id, []),
                    "refused": refused.get(agent_id, []),
                    "sent_at": datetime.now(UTC),
                }
            )
            self.client.publish(Topics(agent_id).receipts, dump_payload(receipt), qos=1)

    def _record(self, conn: store.sqlite3.Connection, msg: mqtt.MQTTMessage) -> records.Outcome:
        payload = bytes(msg.payload)
        if msg.topic.endswith("/status"):
            return records.record_status(conn, msg.topic, payload)
        return records.record_threat(
            conn,
            msg.topic,
            payload,
            snapshots_dir=self.config.store.snapshots_dir,
            grouping=self.grouping,
        )

    def _count(
        self,
        received: int,
        counts: Counter[str],
        rejects: list[tuple[mqtt.MQTTMessage, PayloadError]],
    ) -> None:
        s = self.stats
        s.batches += 1
        s.received += received
        s.stored += counts["stored"]
        s.duplicates += counts["duplicate"]
        s.statuses += counts["status"]
        now = time.monotonic()
        for msg, exc in rejects:
            s.rejected[exc.reason] += 1
            if now - self._last_reject_log.get(exc.reason, -1e9) >= 60:
                self._last_reject_log[exc.reason] = now
                log.warning(
                    "topic=%s rejected (%s): %s [logged once a minute per reason]",
                    msg.topic,
                    exc.reason,
                    exc.detail,
                )

    def _sweep(self) -> None:
        with store.transaction(self._conn) as conn:
            now_ts = time.time()
            changes = events.end_idle(conn, now_ts=now_ts, cutoff_s=self.config.events.cutoff_s)
            due = notify.schedule_repeats(conn, self.config, now_ts=now_ts)
        if due and self.sender is not None:
            self.sender.wake()
        self._publish_changes(changes)
        days = self.config.store.snapshot_retention_days
        if days is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
            snapshots.prune_snapshots(
                self._conn,
                self.config.store.snapshots_dir,
                older_than_ts=time.time() - days * 86400,
            )

    def _publish_changes(self, changes: list[EventChange]) -> None:
        for change in changes:
            message = events.event_message(self._conn, change)
            log.info(
                "event=%d %s agent=%s camera=%s rule=%s threats=%d",
                change.event_id,
                change.type,
                message.agent_id,
                message.camera,
                message.rule,
                message.threat_count,
            )
            if self.config.mqtt.publish_events:
                self.client.publish(Topics.EVENTS, dump_payload(message), qos=1)

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.mqtt.session_expiry_s
        self._writer.start()
        if self.sender is not None:
            self.sender.start()
        self.client.connect_async(
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Store and acknowledge what is in hand, checkpoint the WAL into the database, then
        disconnect (what the broker sends meanwhile is delivered again after a restart)."""
        self._stop.set()
        self._queue.put(None)  # wake the writer
        self._writer.join(timeout=10)
        if self.sender is not None:
            self.sender.stop()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint at stop failed: %s", exc)
        self.client.disconnect()  # after the acks of the last batch (paho sends in order)
        self.client.loop_stop()
        self._conn.close()
