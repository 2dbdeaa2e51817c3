"""The agent: one thread per camera runs capture -> validate -> motion gate -> detect -> rules ->
outbox; the MQTT link publishes the outbox. All cameras share one model session.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from agent.capture import Frame, FrameSource, SourceError, open_source
from agent.config import AgentConfig, CameraConfig
from agent.detect import Detections, Detector, load_manifest
from agent.motion import MotionGate
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from agent.rules import RuleSet, Threat, load_rules
from agent.validate import FrameRejected, validate_frame
from wire.payloads import (
    CameraStatus,
    DetectionOut,
    FrameRef,
    StatusMessage,
    ThreatMessage,
    ThreatOut,
    Versions,
    dump_payload,
)
from wire.version import code_version

log = logging.getLogger(__name__)


@dataclass
class CameraCounters:
    """Per-camera counts; ``rejected`` is broken down by reason."""

    captured: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    no_motion: int = 0
    detected: int = 0
    detections: int = 0
    threats: int = 0
    threat_frames: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {
            "captured": self.captured,
            "rejected": sum(self.rejected.values()),
            "no_motion": self.no_motion,
            "detected": self.detected,
            "detections": self.detections,
            "threats": self.threats,
            "threat_frames": self.threat_frames,
        }
        out.update({f"rejected_{k}": v for k, v in sorted(self.rejected.items())})
        return out


def frame_sha256(frame: Frame, image: np.ndarray) -> str:
    """sha256 of a still's file bytes, or of a video frame's raw BGR pixels."""
    if frame.data is not None:
        return hashlib.sha256(frame.data).hexdigest()
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


class Camera:
    """One camera's source, motion gate and counters, processed on its own thread."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.name = config.name
        self.source: FrameSource = open_source(config.name, config.source)
        self.gate = MotionGate(config.motion)
        self.counters = CameraCounters()
        self.state = "running"


class Agent:
    """Everything one camera host runs (``secagent run``)."""

    def __init__(self, config: AgentConfig, *, config_sha256: str) -> None:
        self.config = config
        self.agent_id = config.agent_id
        manifest = load_manifest(config.detect.model)
        self.detector = Detector(
            manifest,
            providers=config.detect.providers,
            intra_op_threads=config.detect.intra_op_threads,
        )
        self.rules: RuleSet = load_rules(config.rules)
        self.versions = Versions(
            code=code_version(),
            model_sha256=self.detector.sha256,
            rules_sha256=self.rules.sha256,
            config_sha256=config_sha256,
        )
        self.cameras = [Camera(c) for c in config.cameras]
        self.outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
        self.link = MqttLink(
            agent_id=config.agent_id,
            config=config.mqtt,
            outbox=self.outbox,
            status=self.status,
            delete_on=config.outbox.delete_on,
        )
        self._detect_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._final_summary: dict[str, object] | None = None

    # status ----------------------------------------------------------------------------------
    def status(self, state: str) -> StatusMessage:
        return StatusMessage.model_validate(
            {
                "agent_id": self.agent_id,
                "state": state,
                "versions": self.versions,
                "provider": self.detector.provider,
                "cameras": [
                    CameraStatus(name=c.name, state=c.state, counters=c.counters.as_dict())  # type: ignore[arg-type]
                    for c in self.cameras
                ],
                "outbox_depth": self.outbox.depth(),
                "outbox_dropped": self.outbox.dropped(),
                "outbox_oldest_age_s": round(self.outbox.oldest_age_s(), 3),
                "sent_at": datetime.now(UTC),
            }
        )

    def summary(self) -> dict[str, object]:
        """Totals over all cameras, for the CLI's last line."""
        if self._final_summary is not None:
            return self._final_summary
        total: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        for cam in self.cameras:
            total.update(cam.counters.as_dict())
            rejected.update(cam.counters.rejected)
        return {
            "agent_id": self.agent_id,
            "frames_read": total["captured"],
            "frames_rejected": dict(rejected),
            "frames_no_motion": total["no_motion"],
            "frames_detected": total["detected"],
            "detections": total["detections"],
            "threats": total["threats"],
            "threat_messages": total["threat_frames"],
            "published": self.link.published,
            "acknowledged": self.link.acked,
            "receipted": self.link.confirmed,
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped": self.outbox.dropped(),
            "provider": self.detector.provider,
            "versions": self.versions.model_dump(),
        }

    # frames ----------------------------------------------------------------------------------
    def process(self, camera: Camera, frame: Frame) -> ThreatMessage | None:
        """Run one frame through validate, motion, detect and rules; outbox any threats."""
        counters = camera.counters
        counters.captured += 1
        ids = f"agent={self.agent_id} camera={camera.name} frame={frame.frame_id}"
        try:
            image = validate_frame(frame, self.config.validate_)
        except FrameRejected as exc:
            counters.rejected[exc.reason] += 1
            log.warning("%s source=%s rejected: %s", ids, frame.source, exc)
            return None
        motion = camera.gate.check(image)
        if not motion.moved:
            counters.no_motion += 1
            log.debug("%s no motion (largest area %d)", ids, motion.largest_area_px)
            return None
        with self._detect_lock:
            detections = self.detector.detect(image)
        counters.detected += 1
        counters.detections += len(detections)
        threats = self.rules.apply(camera.name, detections)
        log.info(
            "%s lineage=%s detections=%d threats=%d infer_ms=%.1f",
            ids,
            frame.lineage_id,
            len(detections),
            len(threats),
            self.detector.last_inference_ms,
        )
        if not threats:
            return None
        message = self.build_message(frame, image, detections, threats)
        payload = dump_payload(message)
        dropped = self.outbox.put(
            message_id=message.message_id, topic=self.link.topics.threats, payload=payload
        )
        counters.threats += len(threats)
        counters.threat_frames += 1
        if dropped:
            log.warning("%s outbox full: dropped %d oldest message(s)", ids, dropped)
        return message

    def build_message(
        self, frame: Frame, image: np.ndarray, detections: Detections, threats: list[Threat]
    ) -> ThreatMessage:
        dets = [
            DetectionOut(
                label=detections.labels[i],
                class_id=int(detections.class_id[i]),
                score=round(float(detections.score[i]), 6),
                xyxy=tuple(round(float(v), 2) for v in detections.xyxy[i]),  # type: ignore[arg-type]
            )
            for i in range(len(detections))
        ]
        threat_out = [
            ThreatOut(**dets[t.index].model_dump(), rule=t.rule, severity=t.severity)  # type: ignore[arg-type]
            for t in threats
        ]
        return ThreatMessage.model_validate(
            {
                "message_id": uuid.uuid4().hex,
                "agent_id": self.agent_id,
                "camera": frame.camera,
                "lineage_id": frame.lineage_id,
                "frame": FrameRef(
                    frame_id=frame.frame_id,
                    sha256=frame_sha256(frame, image),
                    kind=frame.kind,
                    source=frame.source,
                    captured_at=frame.captured_at,
                    width=image.shape[1],
                    height=image.shape[0],
                ),
                "detections": dets,
                "threats": threat_out,
                "versions": self.versions,
                "snapshot_jpeg_b64": self.snapshot(frame, image),
                "sent_at": datetime.now(UTC),
            }
        )

    def snapshot(self, frame: Frame, image: np.ndarray) -> str | None:
        cfg = self.config.snapshot
        if not cfg.enabled:
            return None
        if (
            frame.data is not None
            and frame.data[:2] == b"\xff\xd8"
            and image.shape[1] <= cfg.max_width_px
            and len(frame.data) < 2_000_000
        ):
            jpeg = frame.data
        else:
            if image.shape[1] > cfg.max_width_px:
                scale = cfg.max_width_px / image.shape[1]
                image = cv2.resize(
                    image,
                    (cfg.max_width_px, round(image.shape[0] * scale)),
                    interpolation=cv2.INTER_AREA,
                )
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            if not ok:
                return None
            jpeg = buf.tobytes()
        return base64.b64encode(jpeg).decode("ascii")

    # threads ---------------------------------------------------------------------------------
    def _camera_loop(self, camera: Camera) -> None:
        try:
            for frame in camera.source.frames():
                if self._stop.is_set():
                    return
                if frame is None:
                    continue
                try:
                    self.process(camera, frame)
                except Exception:
                    log.exception(
                        "agent=%s camera=%s frame=%s failed; camera continues",
                        self.agent_id,
                        camera.name,
                        frame.frame_id,
                    )
            camera.state = "finished"
            log.info(
                "agent=%s camera=%s source finished: %s",
                self.agent_id,
                camera.name,
                camera.counters.as_dict(),
            )
        except SourceError as exc:
            camera.state = "down"
            log.error("agent=%s camera=%s is down: %s", self.agent_id, camera.name, exc)

    def start(self) -> None:
        self.link.start()
        for cam in self.cameras:
            t = threading.Thread(
                target=self._camera_loop, args=(cam,), name=f"camera-{cam.name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def all_finished(self) -> bool:
        return all(c.state != "running" for c in self.cameras)

    def run(self, *, exit_when_done: bool = False, drain_timeout_s: float = 60.0) -> None:
        """Run until :meth:`stop`; with ``exit_when_done``, until every source finished and the
        outbox is drained (or ``drain_timeout_s`` passed after the sources finished)."""
        self.start()
        next_status = time.monotonic() + self.config.mqtt.status_interval_s
        finished_at: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_status:
                self.link.publish_status()
                next_status = now + self.config.mqtt.status_interval_s
            if exit_when_done and self.all_finished():
                finished_at = finished_at or now
                if self.link.idle():
                    break
                if now - finished_at > drain_timeout_s:
                    log.error(
                        "outbox not drained after %.0f s: %d message(s) stay queued",
                        drain_timeout_s,
                        self.outbox.depth(),
                    )
                    break
            self.outbox.wait_changed(0.2)
        self.shutdown()

    def stop(self) -> None:
        self._stop.set()
        self.outbox.notify()

    def shutdown(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.link.stop()
        self._final_summary = self.summary()
        self.outbox.close()


def build_agent(config_path: Path) -> Agent:
    """Load the config and everything it names; errors say which file and field is wrong."""
    from agent.config import load_agent_config

    config, sha = load_agent_config(config_path)
    return Agent(config, config_sha256=sha)
