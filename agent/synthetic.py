"""``secagent send-test-threats``: numbered synthetic threats through the real outbox and MQTT
link, to check the path to the aggregator without a camera and to drive the fault tests.

Each message is a valid ``secagent.threat/2`` whose frame id carries a serial number
(``test-00000042``) and whose versions are those of the configured model manifest, rules and
config files (the model itself is not loaded). Serials cycle over ``cameras`` cameras.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime

from agent.config import AgentConfig, in_force
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from appcommon.version import code_version
from modelrt.manifest import load_manifest
from modelrt.rules import load_rules
from wire.envelope import pack_threat, snapshot_ref
from wire.payloads import StatusMessage, ThreatMessage, Versions, canonical_sha256

log = logging.getLogger(__name__)


def serial_of(frame_id: str) -> int:
    """The serial number in a test frame id."""
    return int(frame_id.removeprefix("test-"))


def synthetic_threat(
    *,
    agent_id: str,
    camera: str,
    serial: int,
    versions: Versions,
    snapshot: bytes | None,
    rule: tuple[str, str] = ("test", "low"),
) -> ThreatMessage:
    """A numbered threat under ``rule`` (name, severity): one of the rules file the versions
    name, since the aggregator accepts only those when it knows the file."""
    box = {"label": "person", "class_id": 0, "score": 0.9, "xyxy": (10.0, 20.0, 110.0, 220.0)}
    return ThreatMessage.model_validate(
        {
            "message_id": uuid.uuid4().hex,
            "agent_id": agent_id,
            "camera": camera,
            "lineage_id": uuid.uuid4().hex,
            "frame": {
                "frame_id": f"test-{serial:08d}",
                "sha256": hashlib.sha256(str(serial).encode()).hexdigest(),
                "kind": "file",
                "source": f"send-test-threats#{serial}",
                "captured_at": datetime.now(UTC),
                "width": 1280,
                "height": 720,
            },
            "detections": [box],
            "threats": [{**box, "rule": rule[0], "severity": rule[1]}],
            "versions": versions,
            "snapshot": None if snapshot is None else snapshot_ref(snapshot),
            "sent_at": datetime.now(UTC),
        }
    )


def send_test_threats(
    config: AgentConfig,
    *,
    count: int,
    start: int,
    cameras: int,
    rate_hz: float,
    drain_timeout_s: float,
) -> dict[str, int]:
    """Commit ``count`` numbered threats to the outbox (at ``rate_hz``, 0 = as fast as
    possible), publish everything in the outbox, return once it is drained or the time is up."""
    config_doc = in_force(config)
    rules = load_rules(config.rules)
    anywhere = [r for r in rules.rules if r.cameras is None] or list(rules.rules)
    rule = (anywhere[0].name, anywhere[0].severity)
    versions = Versions(
        code=code_version(),
        model_sha256=load_manifest(config.detect.model).sha256,
        rules_sha256=rules.sha256,
        config_sha256=canonical_sha256(config_doc),
    )
    outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)

    def status(state: str) -> StatusMessage:
        return StatusMessage.model_validate(
            {
                "agent_id": config.agent_id,
                "state": state,
                "versions": versions,
                "outbox_depth": outbox.depth(),
                "outbox_dropped": outbox.dropped(),
                "outbox_oldest_age_s": outbox.oldest_age_s(),
                "outbox_lost": outbox.losses_wire(),
                "config": config_doc,
                "sent_at": datetime.now(UTC),
            }
        )

    link = MqttLink(
        agent_id=config.agent_id,
        config=config.mqtt,
        outbox=outbox,
        status=status,
        delete_on=config.outbox.delete_on,
    )
    link.start()
    began = time.monotonic()
    dropped = 0
    try:
        for i in range(count):
            serial = start + i
            msg = synthetic_threat(
                agent_id=config.agent_id,
                camera=f"test-{serial % cameras}",
                serial=serial,
                versions=versions,
                snapshot=None,
                rule=rule,
            )
            dropped += outbox.put(
                message_id=msg.message_id, topic=link.topics.threats, payload=pack_threat(msg, None)
            )
            if rate_hz > 0:
                delay = began + (i + 1) / rate_hz - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing of the generator, not a synchronisation
        deadline = time.monotonic() + drain_timeout_s
        while not link.idle() and time.monotonic() < deadline:
            outbox.wait_changed(0.2)
        if link.connected.is_set():
            link.publish_status().wait_for_publish(5)
        return {
            "committed": count,
            "dropped": dropped,
            "outbox_depth": outbox.depth(),
            "outbox_dropped_total": outbox.dropped(),
            "published": link.published,
            "acknowledged": link.acked,
            "receipted": link.confirmed,
        }
    finally:
        link.stop()
        outbox.close()
