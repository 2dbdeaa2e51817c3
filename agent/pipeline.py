"""The agent: the detection engine (camera threads -> shared model -> results, see
:mod:`agent.engine`) feeds rules and the outbox; the MQTT link publishes the outbox and status.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from base64 import b64encode
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from agent.active import ActiveSet
from agent.capture import Frame
from agent.engine import Admitted, Camera, CameraCounters, DetectionEngine
from agent.ledger import SqliteLedger
from agent.loader import LoadedAgent, load_agent
from agent.mqtt import MqttLink
from agent.ota.manager import OtaManager
from agent.outbox import Outbox
from appcommon.version import code_version
from modelrt import Detections, Detector
from modelrt.frames import pixels_sha256, still_sha256
from modelrt.rules import RuleSet, Threat
from wire.envelope import pack_threat, snapshot_ref
from wire.payloads import (
    CameraStatus,
    FrameRef,
    StatusMessage,
    ThreatFields,
    ThreatMessage,
    ThreatMessageV1,
    ThreatOut,
    Versions,
    dump_payload,
)

log = logging.getLogger(__name__)

__all__ = ["Agent", "AgentDied", "Camera", "CameraCounters", "build_agent", "frame_sha256"]


def frame_sha256(frame: Frame, image: np.ndarray) -> str:
    """sha256 of a still's file bytes, or of a video frame's raw BGR pixels."""
    return still_sha256(frame.data) if frame.data is not None else pixels_sha256(image)


class AgentDied(RuntimeError):
    """A thread the agent cannot work without ended unasked: the process exits non-zero."""


class Agent:
    """Everything one camera host runs (``secagent run``)."""

    def __init__(self, loaded: LoadedAgent) -> None:
        config = loaded.config
        self.config = config
        self.config_in_force = loaded.in_force
        self.agent_id = config.agent_id
        self.config_path = loaded.config_path
        self.base_dir = loaded.base_dir
        versions = Versions(
            code=code_version(),
            model_sha256=loaded.detector.sha256,
            rules_sha256=loaded.rules.sha256,
            config_sha256=loaded.config_sha256,
        )
        initial = ActiveSet(loaded.detector, loaded.rules, versions, dict(loaded.releases))
        self._initial = initial
        for problem in loaded.problems:
            log.warning("agent=%s %s", self.agent_id, problem)
        self._stop = threading.Event()
        self.outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
        ledger = SqliteLedger(self.outbox)
        self.cameras = [
            Camera(
                c, stop=self._stop, ledger=ledger, max_file_bytes=config.validate_.max_file_bytes
            )
            for c in config.cameras
        ]
        self.link = MqttLink(
            agent_id=config.agent_id,
            config=config.mqtt,
            outbox=self.outbox,
            status=self.status,
            delete_on=config.outbox.delete_on,
        )
        self.engine = DetectionEngine(
            loaded.detector,
            self.cameras,
            validate=config.validate_,
            on_detections=self._on_detections,
            stop=self._stop,
            agent_id=self.agent_id,
        )
        self.engine.active = initial
        self._final_summary: dict[str, object] | None = None
        self.ota: OtaManager | None = None
        if config.ota.enabled:
            self.ota = OtaManager(self, loaded)
            self.link.on_ota = self.ota.on_desired

    # what is active (switched between two frames by the OTA manager) ---------------------------
    @property
    def active(self) -> ActiveSet:
        engine: DetectionEngine | None = self.__dict__.get("engine")
        active = self._initial if engine is None else engine.active
        assert isinstance(active, ActiveSet)
        return active

    @property
    def detector(self) -> Detector:
        return self.active.detector

    @property
    def rules(self) -> RuleSet:
        return self.active.rules

    @property
    def versions(self) -> Versions:
        return self.active.versions

    # status ----------------------------------------------------------------------------------
    def status(self, state: str) -> StatusMessage:
        return StatusMessage.model_validate(
            {
                "agent_id": self.agent_id,
                "state": state,
                "versions": self.versions,
                "provider": self.detector.provider,
                "inference_ms": round(self.detector.mean_inference_ms, 2),
                "cameras": [
                    CameraStatus(
                        name=c.name,
                        state=c.state,
                        counters=c.counters.as_dict(),
                        detail=c.detail if c.state == "down" else None,
                    )
                    for c in self.cameras
                ],
                "outbox_depth": self.outbox.depth(),
                "outbox_dropped": self.outbox.dropped(),
                "outbox_oldest_age_s": round(self.outbox.oldest_age_s(), 3),
                "outbox_lost": self.outbox.losses_wire(),
                "config": self.config_in_force,
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
            "frames_recalibrated": total["recalibrated"],
            "frames_dropped": total["dropped"],
            "frames_failed": total["failed"],
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
            "inference_ms": round(self.detector.mean_inference_ms, 2),
            "batches": self.engine.batches,
            "versions": self.versions.model_dump(),
        }

    # frames ----------------------------------------------------------------------------------
    def process(self, camera: Camera, frame: Frame) -> ThreatFields | None:
        """Run one frame through validate, motion, detect and rules on this thread (the engine's
        threads do the same, concurrently); outbox any threats."""
        admitted = self.engine.admit(camera, frame)
        if admitted is None:
            return None
        camera.counters.queued += 1
        try:
            output = self.engine.infer([admitted])
            message = self.engine.deliver(admitted, self.engine.detections_of(admitted, output))
        finally:
            camera.counters.finished += 1
            camera.release(frame)
        return message if isinstance(message, ThreatFields) else None

    def _on_detections(self, admitted: Admitted, detections: Detections) -> ThreatFields | None:
        """Rules and outbox for one frame's detections (on the engine's results thread)."""
        camera, frame, image = admitted.camera, admitted.frame, admitted.image
        counters = camera.counters
        ids = f"agent={self.agent_id} camera={camera.name} frame={frame.frame_id}"
        active = admitted.active if isinstance(admitted.active, ActiveSet) else self.active
        active.mark_first(frame.frame_id)
        if self.ota is not None:
            self.ota.on_frame(admitted, detections)
        threats = active.rules.apply(
            camera.name,
            detections,
            zones=camera.config.zones,
            frame_wh=(image.shape[1], image.shape[0]),
        )
        log.info(
            "%s lineage=%s detections=%d threats=%d infer_ms=%.1f",
            ids,
            frame.lineage_id,
            len(detections),
            len(threats),
            active.detector.last_inference_ms,
        )
        if not threats:
            return None
        message, payload = self.build_message(
            frame, image, detections, threats, versions=active.versions
        )
        dropped = self.outbox.put(
            message_id=message.message_id,
            topic=self.link.topics.threats,
            payload=payload,
            processed=frame.file,
        )
        frame.recorded = frame.file is not None
        counters.threats += len(threats)
        counters.threat_frames += 1
        if dropped:
            log.warning("%s outbox full: dropped %d oldest message(s)", ids, dropped)
        return message

    def build_message(
        self,
        frame: Frame,
        image: np.ndarray,
        detections: Detections,
        threats: list[Threat],
        *,
        versions: Versions | None = None,
    ) -> tuple[ThreatFields, bytes]:
        """The threat message of a frame and its payload: ``secagent.threat/2`` with the
        snapshot attached as raw bytes (:func:`wire.envelope.pack_threat`), or with
        ``snapshot.wire: base64`` ``secagent.threat/1`` with the snapshot in base64 inside
        the JSON (for an aggregator older than ``secagent.threat/2``)."""
        dets = detections.to_wire()
        threat_out = [
            ThreatOut(**dets[t.index].model_dump(), rule=t.rule, severity=t.severity)
            for t in threats
        ]
        jpeg = self.snapshot(frame, image)
        fields = {
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
            "versions": versions or self.versions,
            "sent_at": datetime.now(UTC),
        }
        if self.config.snapshot.wire == "base64":
            v1 = ThreatMessageV1.model_validate(
                {**fields, "snapshot_jpeg_b64": None if jpeg is None else b64encode(jpeg).decode()}
            )
            return v1, dump_payload(v1)
        message = ThreatMessage.model_validate(
            {**fields, "snapshot": None if jpeg is None else snapshot_ref(jpeg)}
        )
        return message, pack_threat(message, jpeg)

    def snapshot(self, frame: Frame, image: np.ndarray) -> bytes | None:
        """The JPEG sent with a threat: a still as it is when it fits, else the frame encoded."""
        cfg = self.config.snapshot
        if not cfg.enabled:
            return None
        if (
            frame.data is not None
            and frame.data[:2] == b"\xff\xd8"
            and image.shape[1] <= cfg.max_width_px
            and len(frame.data) < 2_000_000
        ):
            return frame.data
        if image.shape[1] > cfg.max_width_px:
            scale = cfg.max_width_px / image.shape[1]
            image = cv2.resize(
                image,
                (cfg.max_width_px, round(image.shape[0] * scale)),
                interpolation=cv2.INTER_AREA,
            )
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        return buf.tobytes() if ok else None

    # threads ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self.engine.start()
        if self.ota is not None:
            self.ota.start()

    def all_finished(self) -> bool:
        """Every source ended and every frame it gave is through the pipeline."""
        return self.engine.idle()

    def run(
        self,
        *,
        exit_when_done: bool = False,
        drain_timeout_s: float = 60.0,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Run until :meth:`stop`; with ``exit_when_done``, until every source finished and the
        outbox is drained (or ``drain_timeout_s`` passed after the sources finished).
        ``tick`` runs on every turn of the main loop (readiness and watchdog:
        :mod:`agent.liveness`)."""
        self.start()
        next_status = time.monotonic() + self.config.mqtt.status_interval_s
        finished_at: float | None = None
        while not self._stop.is_set():
            if tick is not None:
                tick()
            if not self.link.publisher_alive():  # never half-alive: end, systemd restarts us
                self.shutdown()
                raise AgentDied(f"the outbox publisher died: {self.link.died or 'ended'}")
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

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (threads ending is then expected)."""
        return self._stop.is_set()

    def shutdown(self) -> None:
        self._stop.set()
        if self.ota is not None:
            self.ota.stop()
        self.engine.join(timeout_s=10)
        self.link.stop()
        self._final_summary = self.summary()
        self.outbox.close()


def build_agent(config_path: Path, *, data_dir: Path | None = None) -> Agent:
    """Load the config and everything it names (:func:`agent.loader.load_agent`, as
    ``check-config`` does); errors say which file and field is wrong. With over-the-air
    updates on, the releases active in the update state replace what the config names (after
    a crash loop during probation, the last known good ones: :func:`agent.ota.boot.prepare`)."""
    from agent.ota.boot import prepare

    boot = prepare(config_path, data_dir=data_dir)
    return Agent(
        load_agent(
            boot.config_path,
            data_dir=data_dir,
            base_dir=boot.base_dir,
            model=boot.model,
            rules=boot.rules,
            releases=boot.releases,
        )
    )
