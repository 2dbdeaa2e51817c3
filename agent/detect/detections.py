"""The one type that carries detections between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
