"""Shadow mode: a candidate model runs beside the active one on the same frames (a fraction of
them), on a thread of its own with a queue of one frame, so it never delays the active model;
it never raises a threat. For each sampled frame it compares its detections with the active
model's: pairs of the same label with IoU >= 0.5 (greedy, highest IoU first) are *matched*,
the rest are *only active* / *only candidate*; the rules are applied to both, and a frame whose
set of fired rules differs is a *threat-decision flip* (kept with its frame id). Latencies of
both models (p50, p95) and the candidate's errors are counted. The figures are cumulative and
reported every ``REPORT_EVERY_S``."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from modelrt import Detections, Detector, DetectorError

if TYPE_CHECKING:
    from agent.engine import Admitted
    from agent.pipeline import Agent

log = logging.getLogger(__name__)

REPORT_EVERY_S = 5.0
IOU_MATCH = 0.5
MAX_FLIPS = 100


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), xyxy: (n, m)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(active: Detections, candidate: Detections) -> dict[str, dict[str, int]]:
    """Per label: matched pairs, only-active and only-candidate detections."""
    out: dict[str, dict[str, int]] = {}
    labels_a = [str(x) for x in active.labels]
    labels_c = [str(x) for x in candidate.labels]
    for label in sorted(set(labels_a) | set(labels_c)):
        ia = [i for i, x in enumerate(labels_a) if x == label]
        ic = [i for i, x in enumerate(labels_c) if x == label]
        ious = iou_matrix(active.xyxy[ia], candidate.xyxy[ic])
        pairs = sorted(
            ((ious[i, j], i, j) for i in range(len(ia)) for j in range(len(ic))),
            key=lambda t: -t[0],
        )
        used_a: set[int] = set()
        used_c: set[int] = set()
        for iou, i, j in pairs:
            if iou < IOU_MATCH:
                break
            if i in used_a or j in used_c:
                continue
            used_a.add(i)
            used_c.add(j)
        out[label] = {
            "matched": len(used_a),
            "only_active": len(ia) - len(used_a),
            "only_candidate": len(ic) - len(used_c),
        }
    return out


def _latency(values: deque[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
    }


class ShadowRunner:
    def __init__(
        self,
        agent: Agent,
        detector: Detector,
        *,
        release_id: int,
        fraction: float,
        ids: dict[str, Any],
        seed: int | None = None,
        queue_size: int = 1,
    ) -> None:
        self.agent = agent
        self.detector = detector
        self.release_id = release_id
        self.fraction = fraction
        self.ids = ids
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[Admitted, Detections, float]] = queue.Queue(
            maxsize=queue_size
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._lock = threading.Lock()
        self.frames = 0
        self.skipped = 0
        self.errors = 0
        self.per_camera: dict[str, dict[str, dict[str, int]]] = {}
        self.flips: list[dict[str, Any]] = []
        self.flip_count = 0
        self.active_ms: deque[float] = deque(maxlen=5000)
        self.candidate_ms: deque[float] = deque(maxlen=5000)
        self._last_report = 0.0
        self._reported_frames = -1

    def start(self) -> None:
        self._thread.start()

    def drained(self) -> bool:
        """Every frame queued for the candidate has been compared."""
        return self._queue.unfinished_tasks == 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def offer(self, admitted: Admitted, detections: Detections) -> None:
        """A frame the active model is through with (results thread): sampled, queued."""
        if self._random.random() >= self.fraction:
            with self._lock:
                self.skipped += 1
            return
        detector = admitted.detector or self.agent.detector
        try:
            self._queue.put_nowait((admitted, detections, detector.last_inference_ms))
        except queue.Full:
            with self._lock:
                self.skipped += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                admitted, active, active_ms = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.compare(admitted, active, active_ms=active_ms)
            finally:
                self._queue.task_done()

    def compare(self, admitted: Admitted, active: Detections, *, active_ms: float) -> None:
        image = admitted.image
        try:
            started = time.perf_counter()
            candidate = self.detector.detect(image)
            elapsed = (time.perf_counter() - started) * 1000
        except DetectorError as exc:
            with self._lock:
                self.errors += 1
            log.warning(
                "agent=%s shadow: candidate failed on frame %s: %s",
                self.agent.agent_id,
                admitted.frame.frame_id,
                exc,
            )
            return
        camera = admitted.camera
        rules = self.agent.rules
        wh = (image.shape[1], image.shape[0])
        fired_a = sorted(
            {
                t.rule
                for t in rules.apply(camera.name, active, zones=camera.config.zones, frame_wh=wh)
            }
        )
        fired_c = sorted(
            {
                t.rule
                for t in rules.apply(camera.name, candidate, zones=camera.config.zones, frame_wh=wh)
            }
        )
        counts = match(active, candidate)
        with self._lock:
            self.frames += 1
            self.active_ms.append(active_ms)
            self.candidate_ms.append(elapsed)
            into = self.per_camera.setdefault(camera.name, {})
            for label, c in counts.items():
                total = into.setdefault(
                    label, {"matched": 0, "only_active": 0, "only_candidate": 0}
                )
                for key, value in c.items():
                    total[key] += value
            if fired_a != fired_c:
                self.flip_count += 1
                if len(self.flips) < MAX_FLIPS:
                    self.flips.append(
                        {
                            "camera": camera.name,
                            "frame_id": admitted.frame.frame_id,
                            "active": fired_a,
                            "candidate": fired_c,
                        }
                    )

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {
                "frames": self.frames,
                "skipped": self.skipped,
                "per_camera": {
                    c: {k: dict(v) for k, v in labels.items()}
                    for c, labels in self.per_camera.items()
                },
                "flips": list(self.flips),
                "flip_count": self.flip_count,
                "active_latency": _latency(self.active_ms),
                "candidate_latency": _latency(self.candidate_ms),
                "errors": self.errors,
            }

    def figures_if_due(self, *, force: bool = False) -> dict[str, Any] | None:
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_EVERY_S:
            return None
        if self.frames == self._reported_frames and self.errors == 0 and not force:
            return None
        self._last_report = now
        self._reported_frames = self.frames
        return self.figures()
