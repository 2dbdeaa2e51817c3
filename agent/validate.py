"""Frame validation: every frame is checked before it can reach the motion gate or the model.

A rejected frame gets a :class:`FrameRejected` with a short ``reason`` (counted per camera) and a
human-readable detail. Dimensions are read from the image header *before* decoding, so a
decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from agent.capture import Frame, looks_complete
from agent.config import ValidateConfig

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


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or None, from the magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def header_size_wh(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from a JPEG SOF segment or the PNG IHDR chunk, without decoding pixels."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise FrameRejected("truncated", "PNG has no IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FrameRejected("undecodable", f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise FrameRejected("truncated", "JPEG ends before its frame header (SOF)")


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
