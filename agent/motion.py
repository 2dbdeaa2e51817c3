"""Motion gate: a frame reaches the model only if something in it moved.

In the style NVRs such as Frigate proved: grey, downscale to about ``height_px`` high, blur,
difference against a running-average background, threshold, dilate, and look for a changed
region (contour) of at least ``min_area_px`` downscaled pixels. Masked areas never count.

When a large part of the frame changes at once (``recalibrate_fraction``: lights switching on,
the camera's day/night switch), that is not motion: the background is reset to the new frame and
the frame is reported without motion. The first frame of a camera counts as motion (there is
nothing to compare it with).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import MotionConfig


@dataclass(frozen=True)
class MotionResult:
    """The gate's decision for one frame; areas in downscaled pixels."""

    moved: bool
    largest_area_px: int
    changed_fraction: float
    recalibrated: bool = False


def polygon_mask(
    polygons: list[list[tuple[float, float]]], *, width: int, height: int
) -> np.ndarray | None:
    """(height, width) uint8 mask, 0 inside any polygon (corners as fractions of the frame), 1
    elsewhere; None without polygons."""
    if not polygons:
        return None
    mask = np.ones((height, width), np.uint8)
    scale = np.array([width, height], np.float64)
    for polygon in polygons:
        points = np.round(np.asarray(polygon, np.float64) * scale).astype(np.int32)
        cv2.fillPoly(mask, [points], 0)
    return mask


class MotionGate:
    """Per-camera motion detector with a running-average background."""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._background: np.ndarray | None = None
        self._kernel = np.ones((3, 3), np.uint8)
        self._mask: np.ndarray | None = None
        self._mask_for: tuple[int, int] | None = None
        self._area_px = 0

    def _small_size(self, h: int, w: int) -> tuple[int, int]:
        out_h = min(self.config.height_px, h)
        return max(1, round(w * out_h / h)), out_h

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """BGR or grey (h, w[, 3]) -> blurred float32 (height_px, ~w * height_px / h).

        Downscale first (bilinear, as Frigate does), then grey: both on the small image cost
        far less than converting the full frame."""
        size = self._small_size(*image.shape[:2])
        small = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        k = self.config.blur_px
        return cv2.GaussianBlur(small, (k, k), 0).astype(np.float32)

    def _mask_of(self, shape: tuple[int, ...]) -> np.ndarray | None:
        h, w = int(shape[0]), int(shape[1])
        if self._mask_for != (h, w):
            polygons = [[(p[0], p[1]) for p in poly] for poly in self.config.masks]
            self._mask = polygon_mask(polygons, width=w, height=h)
            self._mask_for = (h, w)
            self._area_px = int(self._mask.sum()) if self._mask is not None else h * w
        return self._mask

    def check(self, image: np.ndarray) -> MotionResult:
        """Compare ``image`` (h, w, 3) BGR with the background, then fold it into the background."""
        if not self.config.enabled:
            return MotionResult(True, 0, 0.0)
        current = self._prepare(image)
        mask = self._mask_of(current.shape)
        if self._background is None or self._background.shape != current.shape:
            self._background = current
            return MotionResult(True, self._area_px, 1.0)
        diff = cv2.absdiff(current, self._background)
        changed: np.ndarray = (diff >= self.config.threshold).astype(np.uint8)
        if mask is not None:
            changed = cv2.bitwise_and(changed, mask)
        fraction = float(changed.sum()) / max(1, self._area_px)
        if fraction > self.config.recalibrate_fraction:
            self._background = current
            return MotionResult(False, 0, fraction, recalibrated=True)
        dilated = cv2.dilate(changed, self._kernel, iterations=2)
        if mask is not None:
            dilated = cv2.bitwise_and(dilated, mask)
        contours, _ = cv2.findContours(dilated, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        largest = max((int(cv2.contourArea(c)) for c in contours), default=0)
        cv2.accumulateWeighted(current, self._background, self.config.background_alpha)
        return MotionResult(
            moved=largest >= self.config.min_area_px,
            largest_area_px=largest,
            changed_fraction=fraction,
        )
