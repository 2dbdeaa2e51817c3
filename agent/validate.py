"""Frame validation: every frame is checked before it can reach the motion gate or the model.

A rejected frame gets a :class:`FrameRejected` with a short ``reason`` (counted per camera) and a
human-readable detail. Dimensions are read from the image header *before* decoding, so a
decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.capture import Frame, looks_complete
from agent.config import ValidateConfig
from modelrt import images
from modelrt.images import image_format

REASONS = (
    "empty",
    "too_large",
    "wrong_format",
    "truncated",
    "undecodable",
    "bad_dimensions",
    "not_a_file",
)
"""``not_a_file``: a folder entry matching the patterns is a named pipe, link, folder or device."""


class FrameRejected(ValueError):
    """A frame failed validation; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def header_size_wh(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from the header, without decoding pixels (:mod:`modelrt.images`)."""
    try:
        return images.header_size_wh(data, fmt)
    except images.ImageHeaderError as exc:
        raise FrameRejected(exc.reason, exc.detail) from exc


def check_dimensions(width: int, height: int, config: ValidateConfig) -> None:
    if width < config.min_side_px or height < config.min_side_px:
        raise FrameRejected(
            "bad_dimensions", f"{width}x{height} is smaller than {config.min_side_px} px a side"
        )
    if width > config.max_side_px or height > config.max_side_px:
        raise FrameRejected(
            "bad_dimensions", f"{width}x{height} exceeds {config.max_side_px} px a side"
        )
    if width * height > config.max_pixels:
        raise FrameRejected(
            "bad_dimensions", f"{width}x{height} exceeds {config.max_pixels} pixels"
        )


def validate_frame(frame: Frame, config: ValidateConfig) -> np.ndarray:
    """Check ``frame`` and return its decoded BGR image (h, w, 3) uint8; FrameRejected if bad."""
    if frame.image is not None:
        pixels = frame.image
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise FrameRejected(
                "undecodable", f"decoded frame is {pixels.dtype} {pixels.shape}, want uint8 (h,w,3)"
            )
        check_dimensions(pixels.shape[1], pixels.shape[0], config)
        return pixels
    data = frame.data
    if not data:
        raise FrameRejected("empty", "file has 0 bytes")
    if len(data) > config.max_file_bytes:
        raise FrameRejected("too_large", f"{len(data)} bytes > {config.max_file_bytes}")
    fmt = image_format(data)
    if fmt is None:
        raise FrameRejected("wrong_format", f"not a JPEG or PNG (starts {data[:8].hex()})")
    width, height = header_size_wh(data, fmt)
    check_dimensions(width, height, config)
    if not looks_complete(data):
        raise FrameRejected("truncated", f"{fmt.upper()} ends before its end marker")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise FrameRejected("undecodable", f"{fmt.upper()} data could not be decoded")
    # OpenCV applies a JPEG's EXIF orientation, so a rotated photo decodes with sides swapped.
    image = decoded
    if (image.shape[1], image.shape[0]) not in ((width, height), (height, width)):
        raise FrameRejected(
            "undecodable",
            f"decoded {image.shape[1]}x{image.shape[0]}, header said {width}x{height}",
        )
    return image
