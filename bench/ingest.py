"""Aggregator ingest rate vs a bare paho subscriber, side by side in one run, zero lost.

Both consumers hold a persistent MQTT session on the same private Mosquitto. While each is
away, the same N threat messages (real payloads with a JPEG snapshot) are queued for it at the
broker; then it connects and the time to drain the queue is measured:

- bare: a paho subscriber that only counts messages (QoS 1, auto-ack);
- secagg: the aggregator's ingest (validate, snapshot to disk, SQLite commit, event grouping,
  ack after commit, receipts to the agent).

    python bench/ingest.py [--messages 5000] [--rounds 2]

The last line prints both rates and the ratio (target: secagg >= 90% of bare).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import AggregatorConfig  # noqa: E402
from aggregator.ingest import Ingest  # noqa: E402
from demo.broker import Mosquitto  # noqa: E402
from demo.footage import sample_still  # noqa: E402

AGENT = "bench-host"
TOPIC = f"secagent/v1/{AGENT}/threats"


def payloads(n: int, *, snapshot: bool = True) -> list[bytes]:
    still = cv2.resize(sample_still("person"), (640, 360))
    ok, jpeg = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    snapshot_b64 = base64.b64encode(jpeg.tobytes()).decode() if snapshot else None
    t0 = datetime.now(UTC)
    out = []
    for i in range(n):
        box = {"label": "person", "class_id": 0, "score": 0.8, "xyxy": [486.7, 358, 794.2, 720]}
        at = (t0 + timedelta(seconds=i * 0.5)).isoformat()
        out.append(
            json.dumps(
                {
                    "schema": "secagent.threat/1",
                    "message_id": uuid.uuid4().hex,
                    "agent_id": AGENT,
                    "camera": f"cam-{i % 4}",
                    "lineage_id": uuid.uuid4().hex,
                    "frame": {
                        "frame_id": uuid.uuid4().hex,
                        "sha256": f"{i:064x}",
                        "kind": "video",
                        "source": f"bench.avi#{i}",
                        "captured_at": at,
                        "width": 1280,
                        "height": 720,
                    },
                    "detections": [box],
                    "threats": [{**box, "rule": "person_on_premises", "severity": "high"}],
                    "versions": {
                        "code": "bench",
                        "model_sha256": "a" * 64,
                        "rules_sha256": "b" * 64,
                        "config_sha256": "c" * 64,
                    },
                    "snapshot_jpeg_b64": snapshot_b64,
                    "sent_at": at,
                }
            ).encode()
        )
    return out


def publish_all(broker: Mosquitto, messages: list[bytes]) -> None:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.max_queued_messages_set(0)
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(TOPIC, m, qos=1) for m in messages]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


class BareSubscriber:
    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.broker = broker
        self.count = 0
        self.done = threading.Event()
        self.target = 0
        self.subscribed = threading.Event()
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(TOPIC, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.set()
        c.on_message = self._on_message
        self.c = c

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(self.broker.host, self.broker.port, clean_start=False, properties=props)
        self.c.loop_start()

    def disconnect(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def measure_bare(broker: Mosquitto, messages: list[bytes], client_id: str) -> float:
    sub = BareSubscriber(broker, client_id)
    sub.connect()
    sub.subscribed.wait(10)
    sub.disconnect()
    publish_all(broker, messages)
    sub.target = len(messages)
    start = time.perf_counter()
    sub.connect()
    if not sub.done.wait(600):
        raise SystemExit(f"bare subscriber got {sub.count} of {len(messages)}")
    elapsed = time.perf_counter() - start
    sub.disconnect()
    return len(messages) / elapsed


def measure_secagg(broker: Mosquitto, messages: list[bytes], work: Path, client_id: str) -> float:
    config = AggregatorConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": client_id,
                "session_expiry_s": 3600,
            },
            "store": {
                "path": str(work / f"{client_id}.sqlite"),
                "snapshots_dir": str(work / "snapshots"),
            },
            "events": {"cutoff_s": 30, "sweep_interval_s": 5},
        }
    )
    first = Ingest(config)
    first.start()
    first.connected.wait(10)
    first.stop()
    publish_all(broker, messages)
    ingest = Ingest(config)
    start = time.perf_counter()
    ingest.start()
    deadline = time.monotonic() + 600
    while ingest.stats.stored < len(messages):
        if time.monotonic() > deadline:
            raise SystemExit(f"secagg stored {ingest.stats.stored} of {len(messages)}")
        time.sleep(0.005)  # polling the counter; resolution well under the run's length
    elapsed = time.perf_counter() - start
    lost = len(messages) - ingest.stats.stored
    ingest.stop()
    if lost or ingest.stats.rejected:
        raise SystemExit(f"lost {lost}, rejected {dict(ingest.stats.rejected)}")
    return len(messages) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="threat messages without the JPEG snapshot (about 1.5 KiB)",
    )
    args = parser.parse_args()
    messages = payloads(args.messages, snapshot=not args.no_snapshot)
    size_kb = sum(map(len, messages)) / len(messages) / 1024
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # No broker persistence: this measures the consumers, not Mosquitto saving its queue.
        with Mosquitto(work / "broker", persistence=False) as broker:
            bare, agg = [], []
            for r in range(args.rounds):
                # Alternate which goes first, so drift on a busy machine hits both alike.
                if r % 2:
                    agg.append(measure_secagg(broker, messages, work, f"secagg-{r}"))
                    bare.append(measure_bare(broker, messages, f"bare-{r}"))
                else:
                    bare.append(measure_bare(broker, messages, f"bare-{r}"))
                    agg.append(measure_secagg(broker, messages, work, f"secagg-{r}"))
                print(
                    f"round {r + 1}: bare {bare[-1]:.0f} msg/s, secagg {agg[-1]:.0f} msg/s, "
                    f"ratio {agg[-1] / bare[-1]:.2f}"
                )
    ratios = sorted(a / b for a, b in zip(agg, bare, strict=True))
    print(
        f"{args.messages} threat messages of {size_kb:.1f} KiB, zero lost: "
        f"bare paho {max(bare):.0f} msg/s, secagg {max(agg):.0f} msg/s (best of "
        f"{args.rounds} rounds), median ratio {ratios[len(ratios) // 2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
