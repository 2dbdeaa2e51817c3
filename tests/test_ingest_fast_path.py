"""The ingest's MQTT client decodes a threat message its own lean way even when another topic
of the same session has a callback of its own (``secagg serve`` takes the agents' run logs so):
before, any per-topic callback sent every message through paho's slower path. The run logs'
messages still reach their callback. Against the test's real Mosquitto."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.mqtt_client import IngestClient, Received
from demo.broker import Mosquitto
from tests.support import wait_for


def test_threats_take_the_lean_path_beside_a_per_topic_callback(broker: Mosquitto) -> None:
    got: list[object] = []
    logs: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    c = IngestClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"fast-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(
        [("secagent/v1/+/threats", 1), ("secagent/v1/+/logs", 1)]
    )
    c.on_subscribe = lambda cl, u, mid, rcs, p: subscribed.set()
    c.on_message = lambda cl, u, m: got.append(m)
    c.message_callback_add("secagent/v1/+/logs", lambda cl, u, m: logs.append(m))
    c.connect(broker.host, broker.port, clean_start=True)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("secagent/v1/fast-host/logs", b"a log line", qos=1).wait_for_publish(10)
        pub.publish("secagent/v1/fast-host/threats", b"a threat", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: got and logs, timeout_s=10, what="both messages")
        (threat,) = got
        assert isinstance(threat, Received), type(threat)  # the lean path
        assert threat.payload == b"a threat" and threat.topic.endswith("/threats")
        assert [m.payload for m in logs] == [b"a log line"]  # paho's way, to its callback
        c.ack_all([(threat.mid, threat.qos), (logs[0].mid, logs[0].qos)])
    finally:
        c.disconnect()
        c.loop_stop()
