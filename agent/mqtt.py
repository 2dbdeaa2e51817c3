"""The agent's MQTT link: publishes the outbox QoS 1 (deleting each message on PUBACK) and keeps a
retained status message, with a retained last will that says offline.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MqttConfig
from agent.outbox import Outbox
from wire.payloads import StatusMessage, dump_payload
from wire.topics import Topics

log = logging.getLogger(__name__)


class MqttLink:
    """One paho client plus a publisher thread that drains the outbox.

    Each outbox message is handed to paho once per process; paho re-sends unacknowledged QoS 1
    messages itself after a reconnect. ``on_publish`` only queues the mid; the publisher thread
    maps mids to outbox rows and deletes them (so no lock is held across paho calls).
    """

    def __init__(
        self,
        *,
        agent_id: str,
        config: MqttConfig,
        outbox: Outbox,
        status: Callable[[str], StatusMessage],
    ) -> None:
        self.topics = Topics(agent_id)
        self.config = config
        self.outbox = outbox
        self._status = status
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._early: set[int] = set()
        self._status_mids: set[int] = set()
        self._status_lock = threading.Lock()
        self._last_seq = 0
        self.published = 0
        self.acked = 0
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"secagent-{agent_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        client.will_set(self.topics.status, dump_payload(status("offline")), qos=1, retain=True)
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)

    # paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s",
                self.config.host,
                self.config.port,
                reason_code,
            )
            return
        log.info("connected to broker %s:%d", self.config.host, self.config.port)
        self.connected.set()
        self.publish_status()
        self.outbox_notify()

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

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: mqtt.ReasonCode,
        properties: object,
    ) -> None:
        self._acks.put(mid)
        self.outbox_notify()

    # ---------------------------------------------------------------------------------------
    def outbox_notify(self) -> None:
        self.outbox.notify()

    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()
        self._thread.start()

    def publish_status(self, state: str = "online") -> mqtt.MQTTMessageInfo:
        with self._status_lock:
            info = self.client.publish(
                self.topics.status, dump_payload(self._status(state)), qos=1, retain=True
            )
            self._status_mids.add(info.mid)
        return info

    def _drain_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            with self._status_lock:
                if mid in self._status_mids:
                    self._status_mids.discard(mid)
                    continue
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early.add(mid)  # a PUBACK that beat the mapping of its mid
                continue
            self.outbox.ack(seq)
            self.acked += 1

    def _publish_some(self) -> None:
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0 or not self.connected.is_set():
            return
        for entry in self.outbox.pending(after_seq=self._last_seq, limit=room):
            info = self.client.publish(entry.topic, entry.payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("publish of message %s failed: %s", entry.message_id, info.rc)
                return
            self._last_seq = entry.seq
            self.published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.outbox.ack(entry.seq)
                self.acked += 1
            else:
                self._inflight[info.mid] = entry.seq

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_acks()
            self._publish_some()
            self.outbox.wait_changed(0.5)
        self._drain_acks()

    def idle(self) -> bool:
        """True when every message committed to the outbox has been acknowledged."""
        return self.outbox.depth() == 0 and not self._inflight

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Publish an offline status (best effort), then disconnect."""
        self._stop.set()
        self.outbox_notify()
        self._thread.join(timeout_s)
        if self.connected.is_set():
            info = self.publish_status("offline")
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
