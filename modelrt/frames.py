"""Frames as both programs must see them: the sha256 that identifies a frame, the decoding of a
still, and the reading of a video frame by frame.

The agent hashes and decodes what it captures with these functions, and ``secagg reproduce``
uses the same ones to find and decode the recorded frame again: a re-run is exact only when both
sides agree on every pixel, so there is one implementation of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

__all__ = [
    "VideoError",
    "VideoFrame",
    "VideoReader",
    "decode_image",
    "pixels_sha256",
    "still_sha256",
]


class VideoError(RuntimeError):
    """A video file cannot be opened or has no usable frame rate."""


def still_sha256(data: bytes) -> str:
    """The id of a still: sha256 of its file bytes."""
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: np.ndarray) -> str:
    """The id of a video frame: sha256 of its decoded BGR pixels (h, w, 3) uint8, row-major."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def decode_image(data: bytes) -> np.ndarray | None:
    """Encoded JPEG/PNG bytes -> BGR (h, w, 3) uint8, or None when OpenCV cannot decode them."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@dataclass(frozen=True)
class VideoFrame:
    """One frame: its index in the file, its time on the video's clock, its BGR pixels (None when
    it could not be decoded)."""

    index: int
    t_s: float
    image: np.ndarray | None


class VideoReader:
    """A video file read from the start, frame by frame (OpenCV/FFmpeg).

    Frames are grabbed in order and only those asked for are decoded, so the frame at index
    ``i`` has the same pixels whoever reads it: the agent sampling at ``fps`` or ``secagg
    reproduce`` looking for the frames of an event.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(f"OpenCV cannot open {path}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0 < fps <= 1000:
            self._cap.release()
            raise VideoError(f"{path} has no usable frame rate ({fps})")
        self.fps = fps

    def frames(
        self, wanted: Callable[[int, float], bool], *, last_index: int | None = None
    ) -> Iterator[VideoFrame]:
        """The frames ``wanted(index, t_s)`` accepts, in order, up to ``last_index``; a frame
        that cannot be decoded comes with ``image`` None."""
        index = 0
        while (last_index is None or index <= last_index) and self._cap.grab():
            t_s = index / self.fps
            if wanted(index, t_s):
                ok, image = self._cap.retrieve()
                yield VideoFrame(index=index, t_s=t_s, image=image if ok else None)
            index += 1

    def pick(self, indices: set[int]) -> dict[int, np.ndarray]:
        """The decoded frames at ``indices`` (those that exist and decode)."""
        if not indices:
            return {}
        picked = self.frames(lambda i, _t: i in indices, last_index=max(indices))
        return {f.index: f.image for f in picked if f.image is not None}

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
