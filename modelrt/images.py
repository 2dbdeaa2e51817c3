"""Image headers read without decoding: the format from the magic bytes and the size from a
JPEG frame header (SOF) or the PNG IHDR chunk. The agent validates its frames with them and the
aggregator the snapshots it receives, both before anything is decoded, so a header that claims
a huge image (a decompression bomb) never allocates its pixels."""

from __future__ import annotations

import struct

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageHeaderError(ValueError):
    """The header cannot be read; ``reason`` is ``truncated`` or ``undecodable``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def image_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or None, from the magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def header_size_wh(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from a JPEG SOF segment or the PNG IHDR chunk, without decoding pixels;
    ImageHeaderError when the header is missing or broken."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageHeaderError("truncated", "PNG has no IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageHeaderError("undecodable", f"JPEG marker expected at byte {pos}")
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
    raise ImageHeaderError("truncated", "JPEG ends before its frame header (SOF)")
