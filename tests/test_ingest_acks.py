"""The ingest acknowledges a committed batch to the broker in one write (:meth:`IngestClient.
ack_all`), and the broker takes every acknowledgement in it: the same session, back again,
gets none of those messages a second time. Against the test's real Mosquitto."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator.mqtt_client import IngestClient, Received
from demo.broker import Mosquitto
from tests.support import wait_for

TOPIC = "secagent/v1/ack-host/threats"
BATCH = 15  # under Mosquitto's default of 20 messages in flight to one client


class Session:
    """An IngestClient with a persistent session that keeps what it receives."""

    def __init__(self, broker: Mosquitto, client_id: str, *, clean_start: bool) -> None:
        self.got: list[Received] = []
        self.subscribed = threading.Event()
        c = IngestClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(TOPIC, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect(broker.host, broker.port, clean_start=clean_start, properties=props)
        c.loop_start()
        assert self.subscribed.wait(10)
        self.client = c

    def _on_message(
        self, client: mqtt.Client, userdata: object, msg: Received | mqtt.MQTTMessage
    ) -> None:
        self.got.append(msg if isinstance(msg, Received) else Received.of(msg))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: Mosquitto, payloads: list[bytes]) -> None:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    for info in [pub.publish(TOPIC, p, qos=1) for p in payloads]:
        info.wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()


def test_a_batch_is_acknowledged_in_one_write_that_the_broker_takes(broker: Mosquitto) -> None:
    client_id = f"acks-{uuid.uuid4().hex[:8]}"
    first = Session(broker, client_id, clean_start=True)
    publish(broker, [f"m{i}".encode() for i in range(BATCH)])
    wait_for(lambda: len(first.got) == BATCH, timeout_s=10, what="the batch delivered")
    writes: list[bytes] = []
    real_send = first.client._sock_send

    def send(data: bytes | bytearray) -> int:
        writes.append(bytes(data))
        return real_send(data)

    first.client._sock_send = send  # type: ignore[method-assign,assignment]  # a spy: the bytes still go
    first.client.ack_all([(m.mid, m.qos) for m in first.got])
    wait_for(lambda: not first.client._out_packet, timeout_s=10, what="the acks written")
    first.close()
    acks = [w for w in writes if w[:1] == b"\x40"]
    assert len(acks) == 1, f"{len(acks)} writes of acknowledgements"
    assert acks[0] == b"".join(b"\x40\x02" + m.mid.to_bytes(2, "big") for m in first.got)

    # The same session again: nothing of the batch comes back, only what is new.
    again = Session(broker, client_id, clean_start=False)
    publish(broker, [b"after"])
    wait_for(lambda: again.got, timeout_s=10, what="the next message")
    again.client.ack_all([(m.mid, m.qos) for m in again.got])
    again.close()
    assert [m.payload for m in again.got] == [b"after"]
