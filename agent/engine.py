"""The detection engine: cameras capture, validate, gate and preprocess on their own threads;
one detection worker runs the shared model on what they admitted, batching frames of several
cameras into one inference when the model's batch dimension allows; a results thread decodes the
outputs and hands each frame's detections on (rules, outbox).

Between the cameras and the worker, each camera has a bounded queue (``queue_size``, default 1).
When it is full, a live camera drops its oldest waiting frame (latest frame wins, the drop is
counted) and a file source waits for the model, so nothing piles up unbounded either way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.capture import Frame, FrameSource, SourceError, open_source
from agent.config import CameraConfig, ValidateConfig
from agent.ledger import FileLedger
from agent.motion import MotionGate
from agent.validate import FrameRejected, validate_frame
from modelrt import Detections, Detector, DetectorError
from modelrt.detector import Letterbox

log = logging.getLogger(__name__)

WAKE_S = 0.2
"""How often blocked threads look at the stop flag (they wait on conditions, not sleeps)."""


@dataclass
class CameraCounters:
    """Per-camera counts; ``rejected`` is broken down by reason. Each field has one writer."""

    captured: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    no_motion: int = 0
    recalibrated: int = 0
    dropped: int = 0
    detected: int = 0
    failed: int = 0
    detections: int = 0
    threats: int = 0
    threat_frames: int = 0
    queued: int = 0
    finished: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {
            "captured": self.captured,
            "rejected": sum(self.rejected.values()),
            "no_motion": self.no_motion,
            "recalibrated": self.recalibrated,
            "dropped": self.dropped,
            "detected": self.detected,
            "failed": self.failed,
            "detections": self.detections,
            "threats": self.threats,
            "threat_frames": self.threat_frames,
        }
        out.update({f"rejected_{k}": v for k, v in sorted(self.rejected.items())})
        return out


class Camera:
    """One camera's source, motion gate, queue policy and counters."""

    def __init__(
        self,
        config: CameraConfig,
        *,
        stop: threading.Event | None = None,
        ledger: FileLedger | None = None,
        max_file_bytes: int | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.source: FrameSource = open_source(
            config.name, config.source, stop=stop, ledger=ledger, max_file_bytes=max_file_bytes
        )
        self.gate = MotionGate(config.motion)
        self.counters = CameraCounters()
        self.drop_oldest = config.drops_when_busy()
        self.done = False
        self.error: str | None = None
        self.beat = time.monotonic()
        """When the camera's thread last got something from its source (a frame, or an idle tick
        of a quiet source) or waited for the model: what the watchdog's liveness check reads."""

    @property
    def state(self) -> str:
        """running, finished (the source ended) or down (cannot read, or reconnecting)."""
        if self.error is not None:
            return "down"
        if self.done:
            return "finished"
        return "down" if getattr(self.source, "down_reason", None) else "running"

    @property
    def detail(self) -> str | None:
        """Why the camera is down, when it is."""
        return self.error or getattr(self.source, "down_reason", None)

    def release(self, frame: Frame) -> None:
        """The pipeline is through with ``frame``: the source may remember or delete its file."""
        try:
            self.source.done(frame)
        except Exception:
            log.exception(
                "camera=%s frame=%s could not be marked processed", self.name, frame.frame_id
            )


@dataclass
class Admitted:
    """A frame that passed validation and the motion gate, preprocessed for the model."""

    camera: Camera
    frame: Frame
    image: np.ndarray
    tensor: np.ndarray
    letterbox: Letterbox
    prepared_for: Detector | None = None
    """The detector ``tensor`` was made for (a switch may come between)."""
    detector: Detector | None = None
    """The detector that inferred the frame (set by the worker)."""
    active: object = None
    """What was active with that detector (rules, versions): :attr:`DetectionEngine.active`."""


class FrameQueues:
    """One bounded queue per camera; the detection worker takes from all of them."""

    def __init__(self, cameras: list[Camera]) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Admitted]] = {c.name: deque() for c in cameras}

    def put(self, item: Admitted, *, stop: threading.Event) -> bool:
        """Queue ``item``; when its camera's queue is full, drop the oldest (counted) or wait
        for room. False when stopped while waiting."""
        camera = item.camera
        with self._cond:
            waiting = self._queues[camera.name]
            while len(waiting) >= camera.config.queue_size:
                if camera.drop_oldest:
                    dropped = waiting.popleft()
                    camera.counters.dropped += 1
                    camera.release(dropped.frame)
                    log.debug(
                        "camera=%s frame=%s dropped: the model is busy",
                        camera.name,
                        dropped.frame.frame_id,
                    )
                    continue
                if stop.is_set():
                    return False
                camera.beat = time.monotonic()  # waiting for the model is not a stuck camera
                self._cond.wait(WAKE_S)
            waiting.append(item)
            camera.counters.queued += 1
            self._cond.notify_all()
            return True

    def take(self, most: int, *, timeout_s: float) -> list[Admitted]:
        """Up to ``most`` waiting frames, oldest camera first and at most one per camera per
        round (so one busy camera cannot starve the others); [] after ``timeout_s``."""
        with self._cond:
            if not any(self._queues.values()):
                self._cond.wait(timeout_s)
            out: list[Admitted] = []
            while len(out) < most:
                heads = [q for q in self._queues.values() if q]
                if not heads:
                    break
                heads.sort(key=lambda q: q[0].frame.captured_at)
                for waiting in heads[: most - len(out)]:
                    out.append(waiting.popleft())
            if out:
                self._cond.notify_all()
            return out

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())


OnDetections = Callable[[Admitted, Detections], object]


class DetectionEngine:
    """Camera threads -> per-camera queues -> one detection worker -> one results thread."""

    def __init__(
        self,
        detector: Detector,
        cameras: list[Camera],
        *,
        validate: ValidateConfig,
        on_detections: OnDetections,
        stop: threading.Event,
        agent_id: str = "",
    ) -> None:
        self.detector = detector
        self.cameras = cameras
        self.validate = validate
        self.on_detections = on_detections
        self.stop = stop
        self.agent_id = agent_id
        self.queues = FrameQueues(cameras)
        self._results: queue.Queue[tuple[list[Admitted], np.ndarray]] = queue.Queue(maxsize=4)
        self._threads: list[threading.Thread] = []
        self._detect_thread: threading.Thread | None = None
        self._results_thread: threading.Thread | None = None
        self.batches = 0
        self.batched_frames = 0
        now = time.monotonic()
        self.worker_beat = now
        """When the detection worker last turned its loop (it turns every WAKE_S when idle)."""
        self.worker_busy_since: float | None = None
        """When the worker began the inference it is running now; None between inferences."""
        self.results_beat = now
        """When the results thread last turned its loop."""
        self.active: object = None
        """What the pipeline runs with the detector (rules, versions); switched with it."""
        self._switch: tuple[Detector, object, threading.Event] | None = None
        self._switch_lock = threading.Lock()
        self.inference_errors = 0
        self.on_inference_ms: Callable[[float], None] | None = None
        """Told each frame's inference time (the metrics' histogram), when set."""
        self.latencies_ms: deque[float] = deque(maxlen=200)
        """Per-frame inference time of the latest frames (since the last switch)."""
        self.recent: deque[np.ndarray] = deque(maxlen=8)
        """The latest frames that reached the model (a candidate model is tried on them)."""

    def switch(self, detector: Detector, active: object, *, timeout_s: float = 30.0) -> bool:
        """Make ``detector`` (with ``active``) the one that infers, between two batches: every
        frame inferred before the switch is decoded and judged with the old pair, every frame
        after with the new one; none is lost or inferred twice. False when the worker did not
        take it within ``timeout_s`` (it is then withdrawn)."""
        done = threading.Event()
        with self._switch_lock:
            if self._detect_thread is None or not self._detect_thread.is_alive():
                self._apply(detector, active)
                return True
            self._switch = (detector, active, done)
        if done.wait(timeout_s):
            return True
        with self._switch_lock:
            if self._switch is not None and self._switch[2] is done:
                self._switch = None
                return False
        return True

    def wait_quiet(self, timeout_s: float) -> bool:
        """Wait until the detection worker has just finished a batch and no frame waits, so
        that other work on the model's cores (trying a candidate model) delays no frame; False
        after ``timeout_s`` without such a moment."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.worker_busy_since is None and self.queues.waiting() == 0:
                return True
            self.stop.wait(0.005)
        return False

    def _apply(self, detector: Detector, active: object) -> None:
        self.detector, self.active = detector, active
        self.latencies_ms.clear()
        self.inference_errors = 0

    def _take_switch(self) -> None:
        with self._switch_lock:
            pending, self._switch = self._switch, None
        if pending is not None:
            detector, active, done = pending
            self._apply(detector, active)
            done.set()

    # the stages, usable one frame at a time ----------------------------------------------------
    def admit(self, camera: Camera, frame: Frame) -> Admitted | None:
        """Validate, gate and preprocess one frame; None (counted) when it goes no further."""
        counters = camera.counters
        counters.captured += 1
        try:
            if frame.rejected is not None:
                raise FrameRejected(*frame.rejected)
            image = validate_frame(frame, self.validate)
        except FrameRejected as exc:
            counters.rejected[exc.reason] += 1
            log.warning(
                "agent=%s camera=%s frame=%s source=%r rejected: %s",
                self.agent_id,
                camera.name,
                frame.frame_id,
                frame.source,
                exc,
            )
            camera.release(frame)
            return None
        motion = camera.gate.check(image)
        if not motion.moved:
            counters.no_motion += 1
            if motion.recalibrated:
                counters.recalibrated += 1
                log.info(
                    "agent=%s camera=%s frame=%s %.0f%% of the frame changed at once: "
                    "background reset, not motion",
                    self.agent_id,
                    camera.name,
                    frame.frame_id,
                    100 * motion.changed_fraction,
                )
            camera.release(frame)
            return None
        detector = self.detector
        tensor, lb = detector.preprocess(image)
        return Admitted(
            camera=camera,
            frame=frame,
            image=image,
            tensor=tensor,
            letterbox=lb,
            prepared_for=detector,
        )

    def detections_of(self, admitted: Admitted, output: np.ndarray) -> Detections:
        """Decode one frame's output (1, ...) into Detections in its pixels."""
        return (admitted.detector or self.detector).postprocess(
            output,
            admitted.letterbox,
            width=admitted.image.shape[1],
            height=admitted.image.shape[0],
        )

    def infer(self, batch: list[Admitted]) -> np.ndarray:
        """Infer a batch with the active detector; every frame records which one it was, and
        what was active with it (a switch happens between two batches, never inside one)."""
        detector, active = self.detector, self.active
        for a in batch:
            if a.prepared_for is not detector:  # queued before a switch to another input size
                a.tensor, a.letterbox = detector.preprocess(a.image)
                a.prepared_for = detector
            a.detector, a.active = detector, active
        tensor = batch[0].tensor if len(batch) == 1 else np.concatenate([a.tensor for a in batch])
        output = detector.infer(tensor)
        self.latencies_ms.append(detector.last_inference_ms / len(batch))
        if self.on_inference_ms is not None:
            for _ in batch:
                self.on_inference_ms(detector.last_inference_ms / len(batch))
        self.recent.append(batch[-1].image)
        self.batches += 1
        self.batched_frames += len(batch)
        return output

    def deliver(self, admitted: Admitted, detections: Detections) -> object:
        """Count the frame as detected and hand its detections on; return what the hand-off
        returned."""
        camera = admitted.camera
        camera.counters.detected += 1
        camera.counters.detections += len(detections)
        return self.on_detections(admitted, detections)

    # threads -----------------------------------------------------------------------------------
    def start(self) -> None:
        for cam in self.cameras:
            self._spawn(f"camera-{cam.name}", self._camera_loop, cam)
        self._detect_thread = self._spawn("detect", self._detect_loop)
        self._results_thread = self._spawn("results", self._results_loop)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def threads_alive(self) -> dict[str, bool]:
        """The detection worker's and the results thread's state (False once they ended)."""
        return {
            t.name: t.is_alive()
            for t in (self._detect_thread, self._results_thread)
            if t is not None
        }

    def _camera_loop(self, camera: Camera) -> None:
        try:
            for frame in camera.source.frames():
                camera.beat = time.monotonic()
                if self.stop.is_set():
                    return
                if frame is None:
                    continue
                try:
                    admitted = self.admit(camera, frame)
                except Exception:
                    camera.counters.failed += 1
                    log.exception(
                        "agent=%s camera=%s frame=%s failed; camera continues",
                        self.agent_id,
                        camera.name,
                        frame.frame_id,
                    )
                    camera.release(frame)
                    continue
                if admitted is not None and not self.queues.put(admitted, stop=self.stop):
                    return
            log.info(
                "agent=%s camera=%s source finished: %s",
                self.agent_id,
                camera.name,
                camera.counters.as_dict(),
            )
        except SourceError as exc:
            camera.error = str(exc)
            log.error("agent=%s camera=%s is down: %s", self.agent_id, camera.name, exc)
        finally:
            camera.done = True

    def _detect_loop(self) -> None:
        while not self.stop.is_set():
            self.worker_beat = time.monotonic()
            self._take_switch()
            batch = self.queues.take(self.detector.max_batch, timeout_s=WAKE_S)
            if not batch:
                continue
            self.worker_busy_since = time.monotonic()
            try:
                output = self.infer(batch)
            except DetectorError as exc:
                self.worker_busy_since = None
                self.inference_errors += len(batch)
                for a in batch:
                    a.camera.counters.failed += 1
                    a.camera.counters.finished += 1
                    a.camera.release(a.frame)
                log.error(
                    "agent=%s frames=%s inference failed: %s",
                    self.agent_id,
                    ",".join(a.frame.frame_id for a in batch),
                    exc,
                )
                continue
            self.worker_busy_since = None
            # Inferred frames are in hand: they go on to rules and the outbox even when a stop
            # came meanwhile (the results thread drains the queue before it ends).
            while True:
                try:
                    self._results.put((batch, output), timeout=WAKE_S)
                    break
                except queue.Full:
                    if self._results_thread is None or not self._results_thread.is_alive():
                        break

    def _results_loop(self) -> None:
        while True:
            self.results_beat = time.monotonic()
            try:
                batch, output = self._results.get(timeout=WAKE_S)
            except queue.Empty:
                worker = self._detect_thread
                finished = worker is None or not worker.is_alive()
                if self.stop.is_set() and finished and self._results.empty():
                    return  # stopped, and nothing more can come
                continue
            for i, admitted in enumerate(batch):
                try:
                    self.deliver(admitted, self.detections_of(admitted, output[i : i + 1]))
                except Exception:
                    admitted.camera.counters.failed += 1
                    log.exception(
                        "agent=%s camera=%s frame=%s failed after detection",
                        self.agent_id,
                        admitted.camera.name,
                        admitted.frame.frame_id,
                    )
                finally:
                    admitted.camera.counters.finished += 1
                    admitted.camera.release(admitted.frame)

    def idle(self) -> bool:
        """Every camera's source ended and every frame it queued is through (or dropped)."""
        return all(
            c.done and c.counters.queued == c.counters.finished + c.counters.dropped
            for c in self.cameras
        )

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.idle():
            if time.monotonic() > deadline or self.stop.wait(0.05):
                return self.idle()
        return True

    def join(self, timeout_s: float = 10.0) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout_s)
