"""Motion gate: a frame reaches the model only if something in it moved.

Grey, downscale to ``height_px``, blur, difference against a running-average background,
threshold, dilate, and look for a changed region of at least ``min_area_px`` downscaled pixels.
The first frame of a camera counts as motion (there is nothing to compare it with).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import MotionConfig


@dataclass(frozen=True)
class MotionResult:
    moved: bool
    largest_area_px: int
    changed_fraction: float


class MotionGate:
    """Per-camera motion detector with a running-average background."""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._background: np.ndarray | None = None
        self._kernel = np.ones((3, 3), np.uint8)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        h, w = grey.shape
        out_h = min(self.config.height_px, h)
        out_w = max(1, round(w * out_h / h))
        small = cv2.resize(grey, (out_w, out_h), interpolation=cv2.INTER_AREA)
        k = self.config.blur_px
        return cv2.GaussianBlur(small, (k, k), 0).astype(np.float32)

    def check(self, image: np.ndarray) -> MotionResult:
        """Compare ``image`` (h, w, 3) BGR with the background, then fold it into the background."""
        if not self.config.enabled:
            return MotionResult(True, 0, 0.0)
        current = self._prepare(image)
        if self._background is None or self._background.shape != current.shape:
            self._background = current
            return MotionResult(True, current.size, 1.0)
        diff = cv2.absdiff(current, self._background)
        changed = (diff >= self.config.threshold).astype(np.uint8)
        mask = cv2.dilate(changed, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        largest = max((int(cv2.contourArea(c)) for c in contours), default=0)
        cv2.accumulateWeighted(current, self._background, self.config.background_alpha)
        return MotionResult(
            moved=largest >= self.config.min_area_px,
            largest_area_px=largest,
            changed_fraction=float(mask.mean()),
        )
