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


_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0..7: no length
_JPEG_SEGMENTS = {
    *_JPEG_SOF,
    0xC4,  # DHT
    0xCC,  # DAC
    0xDB,  # DQT
    0xDC,  # DNL
    0xDD,  # DRI
    0xDE,  # DHP
    0xDF,  # EXP
    *range(0xE0, 0xF0),  # APPn
    *range(0xF0, 0xFE),  # JPGn
    0xFE,  # COM
}


def jpeg_structure_problem(data: bytes) -> str | None:
    """What keeps ``data`` from being a whole JPEG, read from its markers without decoding a
    pixel (a few microseconds whatever the image's size, where a decode costs milliseconds), or
    None.

    From the start-of-image marker to the first scan, every segment must be a known marker
    with a length that fits; a frame header (SOF: 8-bit or 12-bit precision, 1 to 4 components,
    a length that matches them) and a quantization table (DQT) must come before the scan; and
    an end-of-image marker must follow it. This refuses what is no JPEG after its first bytes
    (random data, a page of HTML) and a file cut short; like any decoder it cannot tell damaged
    entropy-coded data from a picture."""
    if not data.startswith(b"\xff\xd8"):
        return "no start-of-image marker"
    pos = 2
    frame = tables = False
    while pos < len(data):
        if data[pos] != 0xFF:
            return f"a marker was expected at byte {pos}"
        if pos + 1 >= len(data):
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan
            if not (frame and tables):
                missing = "frame header (SOF)" if not frame else "quantization table (DQT)"
                return f"the scan starts before a {missing}"
            if pos + 4 > len(data):
                break
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            scan = pos + 2 + length
            if length < 8 or scan >= len(data):
                return f"scan header of {length} bytes at byte {pos} does not fit"
            # From the end: found at once in a whole image, where a search from the scan
            # would read all its entropy-coded bytes (one is found if and only if the other is).
            if data.rfind(b"\xff\xd9", scan) < 0:
                return "no end-of-image marker: the image is cut short"
            return None
        if marker not in _JPEG_SEGMENTS:
            return f"unknown marker 0x{marker:02x} at byte {pos}"
        if pos + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            return f"segment 0x{marker:02x} of {length} bytes at byte {pos} does not fit"
        if marker in _JPEG_SOF:
            if length < 8:
                return f"frame header of {length} bytes"
            precision, _, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            if precision not in (8, 12) or not 1 <= components <= 4 or length != 8 + 3 * components:
                return f"frame header: precision {precision}, {components} components"
            if width == 0:
                return "frame header: width 0"
            frame = True
        elif marker == 0xDB:
            tables = True
        pos = end
    return "the image ends before its first scan"
