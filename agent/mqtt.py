"""The agent's MQTT link: publishes the outbox QoS 1, deletes a message when the aggregator's
receipt says it is stored, and keeps a retained status message with a retained last will that
says offline.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.outbox import Outbox
from wire.payloads import PayloadError, ReceiptMessage, StatusMessage, dump_payload, parse_payload
from wire.topics import Topics

log = logging.getLogger(__name__)


class MqttLink:
    """One paho client plus a publisher thread that drains the outbox.

    - Each outbox message is handed to paho once per connection, oldest first; paho re-sends
      unacknowledged QoS 1 messages itself after a reconnect.
    - A PUBACK marks the message sent; the aggregator's receipt deletes it. After every
      (re)connect, messages without a receipt are published again: a broker that crashed
      after its PUBACK may never have delivered them. The aggregator ignores duplicates.
    - paho callbacks only queue what happened; the publisher thread owns the mid -> outbox row
      mapping, so no lock is held across paho calls.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        config: MqttConfig,
        outbox: Outbox,
        status: Callable[[str], StatusMessage],
        delete_on: str = "receipt",
    ) -> None:
        self.topics = Topics(agent_id)
        self.agent_id = agent_id
        self.delete_on = delete_on
        self.config = config
        self.outbox = outbox
        self._status = status
        self.connected = threading.Event()
        self.before_offline: list[Callable[[], None]] = []
        """Run at stop, before the offline status (which waits for its PUBACK, and so for what
        was published before it): the run logs send what they hold."""
        self.attempted = threading.Event()
        """Set once the first connection attempt has an outcome (connected, refused or failed)."""
        self._stop = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._receipts: queue.SimpleQueue[ReceiptMessage] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._early: set[int] = set()
        self._status_mids: set[int] = set()
        self._status_lock = threading.Lock()
        self._last_seq = 0
        self._resend = threading.Event()
        self._reconnected = threading.Event()
        self._receipt_wait_s = config.receipt_timeout_s
        self._next_receipt_check = 0.0
        self.published = 0
        self.acked = 0
        self.confirmed = 0
        self.refused = 0
        self.on_ota: Callable[[bytes], None] | None = None
        """Called (on paho's thread) with each desired-state message of the ota topic."""
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"secagent-{agent_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        client.will_set(self.topics.status, dump_payload(status("offline")), qos=1, retain=True)
        if config.tls_ca_file:
            client.tls_set(ca_certs=str(config.tls_ca_file))
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(0)
        # Jitter, so that agents reconnecting after a broker restart do not arrive all at once.
        self._retry_min_s = random.randint(1, 3)
        self._retry_max_s = random.randint(20, 40)
        client.reconnect_delay_set(min_delay=self._retry_min_s, max_delay=self._retry_max_s)
        self.connect_failures = 0
        self.last_connect_error: str | None = None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        self.died: str | None = None
        """Why the publisher thread ended unasked (liveness then stops the watchdog)."""
        self.started = False
        self._thread = threading.Thread(target=self._guarded, name="outbox-publisher", daemon=True)

    # paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        self.attempted.set()
        if reason_code.is_failure:
            self.connect_failures += 1
            self.last_connect_error = f"refused: {reason_code}"
            log.error(
                "agent=%s broker %s:%d refused the connection: %s; next attempt in %.0f s",
                self.agent_id,
                self.config.host,
                self.config.port,
                reason_code,
                self._next_retry_s(),
            )
            return
        log.info(
            "agent=%s connected to broker %s:%d%s",
            self.agent_id,
            self.config.host,
            self.config.port,
            f" after {self.connect_failures} failed attempt(s)" if self.connect_failures else "",
        )
        self.connect_failures = 0
        self.last_connect_error = None
        self._forget_unacknowledged(client)
        client.subscribe(self.topics.receipts, qos=1)
        self._reconnected.set()
        if self.on_ota is not None:
            client.subscribe(self.topics.ota, qos=1)
        self._resend.set()
        self.connected.set()
        self.publish_status()
        self.outbox.notify()

    @staticmethod
    def _forget_unacknowledged(client: mqtt.Client) -> None:
        """Drop paho's copies of the messages it published on the last connection and had no
        PUBACK for. paho would send them again as soon as this callback returns, ahead of older
        messages the broker did acknowledge but may have lost in a crash; the publisher sends
        everything without a receipt again anyway, oldest first, so the order per camera holds.
        (paho has no public call for this: its outgoing queue and counter, under its lock.)"""
        with client._out_message_mutex:
            client._out_messages.clear()
            client._inflight_messages = 0

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """A connection attempt failed before MQTT spoke (refused, unreachable, DNS, TLS).

        paho calls this while it handles the OSError, so the error is the one being handled."""
        error = sys.exc_info()[1]
        reason = (
            (error.strerror or str(error)) if isinstance(error, OSError) else "connection failed"
        )
        self.connect_failures += 1
        self.last_connect_error = reason
        log.warning(
            "agent=%s cannot reach broker %s:%d: %s; attempt %d, next in %.0f s",
            self.agent_id,
            self.config.host,
            self.config.port,
            reason,
            self.connect_failures,
            self._next_retry_s(),
        )
        self.attempted.set()

    def _next_retry_s(self) -> float:
        """paho's next reconnect wait: the minimum, doubled after each failed attempt up to the
        maximum (it keeps the last wait in ``_reconnect_delay``, None after a connect)."""
        last = getattr(self.client, "_reconnect_delay", None)
        if not isinstance(last, int | float):
            return float(self._retry_min_s)
        return float(min(last * 2, self._retry_max_s))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning(
                "agent=%s disconnected from broker: %s (will reconnect)", self.agent_id, reason_code
            )
        self.connected.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        self._acks.put(mid)
        self.outbox.notify()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.ota:
            if self.on_ota is not None:
                self.on_ota(bytes(msg.payload))
            return
        try:
            receipt = parse_payload(bytes(msg.payload), ReceiptMessage)
        except PayloadError as exc:
            log.warning("agent=%s bad receipt on %s: %s", self.agent_id, msg.topic, exc)
            return
        self._receipts.put(receipt)
        self.outbox.notify()

    # publisher thread ------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        self.started = True

    def publisher_alive(self) -> bool:
        return self._thread.is_alive()

    def _guarded(self) -> None:
        """The publisher thread: never half-alive. Whatever ends it unasked is recorded; the
        liveness check then stops the watchdog pings and systemd restarts the agent."""
        try:
            self._run()
        except BaseException as exc:
            self.died = f"{type(exc).__name__}: {exc}"
            log.critical("agent=%s the outbox publisher died: %s", self.agent_id, self.died)
            raise

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
            self._sent(seq)

    def _sent(self, seq: int) -> None:
        self.acked += 1
        if self.delete_on == "puback":
            self.outbox.delete(seq)
        else:
            self.outbox.mark_sent(seq)

    def _drain_receipts(self) -> None:
        while True:
            try:
                receipt = self._receipts.get_nowait()
            except queue.Empty:
                return
            for refusal in receipt.refused:
                log.error(
                    "agent=%s message=%s refused by the aggregator: %s",
                    self.agent_id,
                    refusal.message_id,
                    refusal.reason,
                )
            self._receipt_wait_s = self.config.receipt_timeout_s  # the aggregator is there
            self.confirmed += self.outbox.confirm(receipt.stored)
            self.refused += self.outbox.confirm([r.message_id for r in receipt.refused])

    def _publish_some(self) -> None:
        if not self.connected.is_set():
            return
        if self._reconnected.is_set():  # paho forgot the last connection's messages
            self._reconnected.clear()
            self._inflight.clear()
            self._early.clear()
        if self._resend.is_set():
            self._resend.clear()
            self._last_seq = 0  # everything without a receipt goes out again, oldest first
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        waiting = set(self._inflight.values())
        for entry in self.outbox.pending(after_seq=self._last_seq, limit=room + len(waiting)):
            if entry.seq in waiting:  # paho re-sends it itself
                self._last_seq = entry.seq
                continue
            info = self.client.publish(entry.topic, entry.payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning(
                    "agent=%s publish of message %s failed: %s",
                    self.agent_id,
                    entry.message_id,
                    info.rc,
                )
                return
            self._last_seq = entry.seq
            self.published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._sent(entry.seq)
            else:
                self._inflight[info.mid] = entry.seq
            if len(self._inflight) >= self.config.max_inflight:
                return

    def _check_receipts_overdue(self) -> None:
        """A broker that acknowledged a message may still lose it (a crash before it saved or
        delivered it, no subscriber yet): send again what has waited too long for a receipt."""
        now = time.monotonic()
        if now < self._next_receipt_check or self.delete_on != "receipt":
            return
        self._next_receipt_check = now + 1.0
        oldest = self.outbox.oldest_sent_at()
        if oldest is None or time.time() - oldest < self._receipt_wait_s:
            return
        log.warning(
            "agent=%s no receipt for %.0f s: sending %d unreceipted message(s) again",
            self.agent_id,
            time.time() - oldest,
            self.outbox.depth(),
        )
        self._resend.set()
        self.outbox.touch_sent(time.time())
        self._receipt_wait_s = min(self._receipt_wait_s * 2, 600.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_acks()
            self._drain_receipts()
            self._check_receipts_overdue()
            self._publish_some()
            self.outbox.wait_changed(0.5)
        self._drain_acks()
        self._drain_receipts()

    def idle(self) -> bool:
        """True when the aggregator has a receipt out for every message of the outbox."""
        return self.outbox.depth() == 0

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Publish an offline status (best effort), then disconnect."""
        self._stop.set()
        self.outbox.notify()
        self._thread.join(timeout_s)
        for flush in self.before_offline:
            flush()
        if self.connected.is_set():
            info = self.publish_status("offline")
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("agent=%s offline status not confirmed: %s", self.agent_id, exc)
        self.client.disconnect()
        self.client.loop_stop()
