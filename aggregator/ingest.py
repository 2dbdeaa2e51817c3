"""MQTT ingest: validate every threat message, store it and group it in one SQLite transaction,
and only then acknowledge it to the broker (paho ``manual_ack``). The session is persistent
(fixed client id, no clean start), so what arrives while the aggregator is down is queued by
the broker; a message whose id is already stored is acknowledged and ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator import events, store
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from wire.payloads import PayloadError, StatusMessage, ThreatMessage, dump_payload, parse_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """In-memory counters since start (the persistent ones are in ``ingest_counters``)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.rejected = Counter()


def save_snapshot(snapshots_dir: Path, jpeg_b64: str) -> str:
    """Write the snapshot under its sha256 (idempotent); return the sha256."""
    try:
        jpeg = base64.b64decode(jpeg_b64, validate=True)
    except binascii.Error as exc:
        raise PayloadError("schema_violation", f"snapshot is not base64: {exc}") from exc
    if not jpeg.startswith(b"\xff\xd8"):
        raise PayloadError("schema_violation", "snapshot is not a JPEG")
    sha = hashlib.sha256(jpeg).hexdigest()
    path = snapshots_dir / sha[:2] / f"{sha}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(jpeg)
        tmp.replace(path)
    return sha


class Ingest:
    """The MQTT side of ``secagg``: one paho client, one writer thread owning the database."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.stats = IngestStats()
        self.connected = threading.Event()
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=10000)
        self._stop = threading.Event()
        self._last_reject_log: dict[str, float] = {}
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
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
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
            log.error("broker refused the aggregator: %s", reason_code)
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
        if self.connected.is_set():
            log.warning("disconnected from broker: %s (will reconnect)", reason_code)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(msg)  # blocks the network thread when the writer is far behind

    # writer thread ---------------------------------------------------------------------------
    def _write_loop(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            timeout = max(0.0, next_sweep - time.monotonic())
            try:
                msg = self._queue.get(timeout=timeout)
            except queue.Empty:
                msg = None
            if msg is not None:
                self._handle(msg)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.config.events.sweep_interval_s

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        try:
            if msg.topic.endswith("/status"):
                self._handle_status(msg)
            else:
                self._handle_threat(msg)
        except PayloadError as exc:
            self._reject(msg, exc)
        except Exception:
            # Not acked: the broker redelivers it after a reconnect. Log it and go on.
            log.exception(
                "topic=%s mid=%d could not be stored; left unacknowledged", msg.topic, msg.mid
            )
            return
        self._ack(msg)

    def _ack(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def _reject(self, msg: mqtt.MQTTMessage, exc: PayloadError) -> None:
        assert self.stats.rejected is not None
        self.stats.rejected[exc.reason] += 1
        with store.transaction(self._conn):
            store.bump_counter(self._conn, f"rejected_{exc.reason}")
        now = time.monotonic()
        if now - self._last_reject_log.get(exc.reason, -1e9) >= 60:
            self._last_reject_log[exc.reason] = now
            log.warning(
                "topic=%s rejected (%s): %s [logged once a minute per reason]",
                msg.topic,
                exc.reason,
                exc.detail,
            )

    def _handle_status(self, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a retained status being cleared
        status = parse_payload(bytes(msg.payload), StatusMessage)
        self._check_agent(msg.topic, status.agent_id)
        log.info(
            "agent=%s is %s (outbox depth %d)", status.agent_id, status.state, status.outbox_depth
        )

    @staticmethod
    def _check_agent(topic: str, agent_id: str) -> None:
        try:
            topic_agent = Topics.agent_of(topic)
        except TopicError as exc:
            raise PayloadError("bad_topic", str(exc)) from exc
        if topic_agent != agent_id:
            raise PayloadError("agent_mismatch", f"topic says {topic_agent}, payload {agent_id}")

    def _handle_threat(self, msg: mqtt.MQTTMessage) -> None:
        threat = parse_payload(bytes(msg.payload), ThreatMessage)
        self._check_agent(msg.topic, threat.agent_id)
        snapshot_sha = (
            save_snapshot(self.config.store.snapshots_dir, threat.snapshot_jpeg_b64)
            if threat.snapshot_jpeg_b64
            else None
        )
        cutoff = self.config.events.cutoff_s
        changes: list[EventChange] = []
        captured_ts = threat.frame.captured_at.timestamp()
        with store.transaction(self._conn) as conn:
            if not store.insert_message(
                conn,
                threat,
                received_at=datetime.now(UTC).isoformat(),
                snapshot_sha256=snapshot_sha,
            ):
                self.stats.duplicates += 1
                store.bump_counter(conn, "duplicates")
                log.info(
                    "agent=%s message=%s duplicate ignored", threat.agent_id, threat.message_id
                )
                return
            for t in threat.threats:
                event_id, more = events.assign(
                    conn,
                    agent_id=threat.agent_id,
                    camera=threat.camera,
                    rule=t.rule,
                    label=t.label,
                    severity=t.severity,
                    score=t.score,
                    captured_ts=captured_ts,
                    message_id=threat.message_id,
                    cutoff_s=cutoff,
                )
                changes += more
                conn.execute(
                    "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, "
                    "label, class_id, score, x1, y1, x2, y2, captured_ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        threat.message_id,
                        event_id,
                        threat.agent_id,
                        threat.camera,
                        t.rule,
                        t.severity,
                        t.label,
                        t.class_id,
                        t.score,
                        *t.xyxy,
                        captured_ts,
                    ),
                )
            store.bump_counter(conn, "stored")
        self.stats.stored += 1
        log.info(
            "agent=%s camera=%s frame=%s lineage=%s message=%s stored %d threat(s)",
            threat.agent_id,
            threat.camera,
            threat.frame.frame_id,
            threat.lineage_id,
            threat.message_id,
            len(threat.threats),
        )
        self._publish_changes(changes)

    def _sweep(self) -> None:
        with store.transaction(self._conn) as conn:
            changes = events.end_idle(
                conn, now_ts=time.time(), cutoff_s=self.config.events.cutoff_s
            )
        self._publish_changes(changes)

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
        self.client.connect_async(
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._stop.set()
        self._queue.put(None)  # wake the writer
        self._writer.join(timeout=10)
        self._conn.close()
