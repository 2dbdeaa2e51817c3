"""The ingest's MQTT client: paho's, with its per-message costs taken out of the way of the
store writer.

The ingest runs two threads under one interpreter lock: paho's network thread, which reads and
hands over each message, and the store writer. paho's cost per message (about 40 µs on the
development machine: a ``select`` and three reads or more a packet, a ``Properties`` object
and a message object with its own ``threading.Condition``) and every system call it makes,
which lets the writer take the lock and makes the network thread wait to get it back, come
straight off the ingest's rate. So :class:`IngestClient`:

- reads the socket a buffer at a time and handles every whole packet in it before the next
  ``select`` (:meth:`IngestClient._sock_recv`, :meth:`IngestClient.loop_read`);
- decodes a QoS 1 PUBLISH without MQTT 5 properties (what agents send), on a topic that no
  per-topic callback takes (the run logs have one of their own), into a small
  :class:`Received` (:meth:`IngestClient._handle_publish`), with the sha256 of a snapshot
  attached to it (hashlib lets the writer run meanwhile); anything else goes through paho;
- acknowledges a whole batch with one wake-up of the network thread and one write
  (:meth:`ack_all`);
- remembers why the last connection attempt failed (paho's ``on_connect_fail`` is not told).

These lean on paho's private methods and fields (``_sock_recv``, ``_handle_publish``,
``_in_packet``, ``_sockpairW``, ``_packet_queue``) of the version pinned in
``constraints.txt``; the ingest tests run through all of them.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from wire.envelope import attachment_sha256

READ_BUFFER_BYTES = 256 * 1024
"""What one read from the broker's socket takes at most."""
_U16 = struct.Struct("!H")
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id
FILTERED_TOPICS_MAX = 10_000
"""Topics remembered as taken by a per-topic callback or not (then forgotten all at once)."""


@dataclass(frozen=True, slots=True)
class Received:
    """A message as the ingest needs it. ``attachment_sha256``: the sha256 of a binary
    envelope's attachment (:func:`wire.envelope.attachment_sha256`), computed on the network
    thread, where hashing a snapshot runs beside the store writer instead of in its turn."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    attachment_sha256: str | None = None

    @classmethod
    def of(cls, message: mqtt.MQTTMessage) -> Received:
        payload = bytes(message.payload)
        return cls(message.topic, payload, message.mid, message.qos, attachment_sha256(payload))


class IngestClient(mqtt.Client):
    """See the module's docstring. ``on_message`` receives a :class:`Received` or paho's
    ``MQTTMessage`` (a message that took paho's way): :meth:`Received.of` makes one of it."""

    last_connect_error: OSError | None = None
    _read_buffer = b""
    _read_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._filtered_topics: dict[str, bool] = {}
        super().__init__(*args, **kwargs)

    def reconnect(self) -> MQTTErrorCode:
        self._read_buffer, self._read_at = b"", 0  # what the last connection left unread
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read_buffer):
            self._read_buffer = super()._sock_recv(max(bufsize, READ_BUFFER_BYTES))
            self._read_at = 0
        end = min(self._read_at + bufsize, len(self._read_buffer))
        data = self._read_buffer[self._read_at : end]
        self._read_at = end
        return data

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # Packets already read: handle them now, select() would not say they are there.
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._read_at < len(self._read_buffer)
            and self._sock is not None
        ):
            rc = super().loop_read(1)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        on_message = self.on_message
        # The common case only: QoS 1, acknowledged by the ingest after its commit, MQTT 5
        # with no properties, a topic that no per-topic callback takes.
        if (
            (header & 0x06) >> 1 != 1
            or not self._manual_ack
            or self._protocol != mqtt.MQTTv5
            or on_message is None
        ):
            return super()._handle_publish()
        try:
            (length,) = _U16.unpack_from(packet, 0)
            at = 2 + length
            topic = packet[2:at].decode()
            (mid,) = _U16.unpack_from(packet, at)
            if packet[at + 2] != 0:  # properties: paho decodes them
                return super()._handle_publish()
        except (struct.error, IndexError, UnicodeDecodeError):
            return super()._handle_publish()  # malformed: paho says so its own way
        if self._on_message_filtered._root._children and self._filtered(topic):
            return super()._handle_publish()  # paho hands it to its callback
        payload = bytes(packet[at + 3 :])
        received = Received(topic, payload, mid, 1, attachment_sha256(payload))
        on_message(self, self._userdata, received)  # type: ignore[arg-type]  # see the class
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _filtered(self, topic: str) -> bool:
        """Does a per-topic callback (``message_callback_add``) take ``topic``'s messages?"""
        taken = self._filtered_topics.get(topic)
        if taken is None:
            if len(self._filtered_topics) >= FILTERED_TOPICS_MAX:
                self._filtered_topics.clear()
            with self._callback_mutex:
                match = self._on_message_filtered.iter_match(topic)  # type: ignore[no-untyped-call]
                taken = next(iter(match), None) is not None
            self._filtered_topics[topic] = taken
        return taken

    def message_callback_add(self, sub: str, callback: mqtt.CallbackOnMessage) -> None:
        self._filtered_topics = {}
        super().message_callback_add(sub, callback)

    def message_callback_remove(self, sub: str) -> None:
        self._filtered_topics = {}
        super().message_callback_remove(sub)

    def ack_all(self, acks: list[tuple[int, int]]) -> None:
        """Acknowledge these (mid, qos) messages, waking the network thread once for all of
        them (paho's ``ack`` wakes it for each: a write to its wake-up socket pair, from this
        thread, and a ``select`` there). The QoS 1 acknowledgements go out as one write: the
        PUBACK packets joined, each as paho's ``ack`` makes it (success, no properties), where
        paho queues and sends each on its own."""
        if not self._manual_ack or not acks:
            return
        pubacks = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid, qos in acks if qos == 1)
        wake, self._sockpairW = self._sockpairW, None
        try:
            if pubacks:
                self._packet_queue(mqtt.PUBACK, pubacks, 0, 1)
            for mid, qos in acks:
                if qos == 2:
                    self.ack(mid, qos)
        finally:
            self._sockpairW = wake
        if wake is not None:
            with contextlib.suppress(BlockingIOError):
                wake.send(b"0")
