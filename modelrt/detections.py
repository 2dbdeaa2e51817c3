"""The one type that carries detections between stages, and its one conversion to and from the
wire form (the agent publishes it; ``secagg reproduce`` compares a re-run with it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wire.payloads import DetectionOut

SCORE_DECIMALS = 6
"""Scores go on the wire rounded to 1e-6."""
BOX_DECIMALS = 2
"""Box corners go on the wire rounded to 0.01 px."""


@dataclass(frozen=True)
class Detections:
    """``n`` detections as parallel arrays.

    - ``xyxy``: (n, 4) float32, corners in pixels of the image they refer to
    - ``score``: (n,) float32 in [0, 1]
    - ``class_id``: (n,) int64, the model's class index
    - ``labels``: n label strings (from the manifest's label map)
    """

    xyxy: np.ndarray
    score: np.ndarray
    class_id: np.ndarray
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = self.score.shape[0] if self.score.ndim == 1 else -1
        if self.score.ndim != 1:
            raise ValueError(f"score must be (n,), got {self.score.shape}")
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be ({n}, 4) to match score, got {self.xyxy.shape}")
        if self.class_id.shape != (n,):
            raise ValueError(f"class_id must be ({n},) to match score, got {self.class_id.shape}")
        if len(self.labels) not in (0, n):
            raise ValueError(f"labels must be empty or {n} long, got {len(self.labels)}")

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            score=np.zeros((0,), np.float32),
            class_id=np.zeros((0,), np.int64),
        )

    def select(self, keep: np.ndarray) -> Detections:
        """The detections at indices or boolean mask ``keep``."""
        idx = np.arange(len(self))[keep]
        return Detections(
            xyxy=self.xyxy[idx],
            score=self.score[idx],
            class_id=self.class_id[idx],
            labels=tuple(self.labels[i] for i in idx) if self.labels else (),
        )

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same detections with x multiplied by ``sx`` and y by ``sy`` (boxes found on a
        resized copy of a frame, mapped back to the frame's pixels)."""
        factors = np.array([sx, sy, sx, sy], np.float64)
        return Detections(
            xyxy=(self.xyxy.astype(np.float64) * factors).astype(np.float32),
            score=self.score,
            class_id=self.class_id,
            labels=self.labels,
        )

    def to_wire(self) -> list[DetectionOut]:
        """The wire form: scores rounded to ``SCORE_DECIMALS``, boxes to ``BOX_DECIMALS``."""
        if len(self) and not self.labels:
            raise ValueError("detections without labels have no wire form")
        return [
            DetectionOut(
                label=self.labels[i],
                class_id=int(self.class_id[i]),
                score=round(float(self.score[i]), SCORE_DECIMALS),
                xyxy=(
                    round(float(self.xyxy[i, 0]), BOX_DECIMALS),
                    round(float(self.xyxy[i, 1]), BOX_DECIMALS),
                    round(float(self.xyxy[i, 2]), BOX_DECIMALS),
                    round(float(self.xyxy[i, 3]), BOX_DECIMALS),
                ),
            )
            for i in range(len(self))
        ]

    @classmethod
    def from_wire(cls, detections: Sequence[DetectionOut]) -> Detections:
        """Detections from their wire form (what a threat message recorded)."""
        return cls(
            xyxy=np.array([d.xyxy for d in detections], np.float32).reshape(-1, 4),
            score=np.array([d.score for d in detections], np.float32),
            class_id=np.array([d.class_id for d in detections], np.int64),
            labels=tuple(d.label for d in detections),
        )
