"""Bad images at the edge. Headers that claim huge images (a JPEG saying 16000x3000, a real
PNG of 7000x7000 well under the size limit) are refused from their header, never decoded, and
a 60 MB still is refused by its size without being read: peak memory stays flat. A still whose
file name is not valid UTF-8, or holds a newline or an ANSI escape, has its person detected and
its threat kept, and the name never forges a log line.

``HOSTILE`` is the class of input: each row a file and the reason it is refused with."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from agent.capture import safe_text
from agent.pipeline import build_agent
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support.processes import write_agent_config
from wire.payloads import ThreatFields, dump_payload

SMALL_JPEG = cv2.imencode(".jpg", sample_still("empty"))[1].tobytes()


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(SMALL_JPEG)
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png(width: int, height: int) -> bytes:
    """A real, valid PNG of black RGB pixels, made a row at a time (tiny in memory and on
    disk: 7000x7000 is ~150 KB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    squash = zlib.compressobj(9)
    row = b"\0" + bytes(width * 3)
    idat = b"".join(squash.compress(row) for _ in range(height)) + squash.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sparse(size: int) -> Callable[[Path], object]:
    """A JPEG start, then ``size`` bytes of a sparse file (no disk used)."""

    def make(path: Path) -> None:
        path.write_bytes(SMALL_JPEG[:2000])
        os.truncate(path, size)

    return make


HOSTILE: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "jpeg header claims 16000x3000",
        lambda p: p.write_bytes(jpeg_claiming(16000, 3000)),
        "bad_dimensions",
    ),
    (
        "jpeg header claims 65500x65500",
        lambda p: p.write_bytes(jpeg_claiming(65500, 65500)),
        "bad_dimensions",
    ),
    ("png of 7000x7000", lambda p: p.write_bytes(png(7000, 7000)), "bad_dimensions"),
    ("a 60 MB still", sparse(60 * 1024 * 1024), "too_large"),
]

MEASURE = """
import json, resource, sys, threading
from pathlib import Path
from agent.config import DirectorySourceConfig, ValidateConfig
from agent.folder import DirectorySource
from agent.validate import FrameRejected, validate_frame
config = DirectorySourceConfig.model_validate(
    {"type": "directory", "path": sys.argv[1], "watch": False}
)
limits = ValidateConfig()
source = DirectorySource("door", config, max_file_bytes=limits.max_file_bytes)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reasons = {}
for frame in source.frames():
    if frame is None:
        continue
    try:
        if frame.rejected is not None:
            raise FrameRejected(*frame.rejected)
        validate_frame(frame, limits)
        reasons[Path(frame.source).name] = "accepted"
    except FrameRejected as exc:
        reasons[Path(frame.source).name] = exc.reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_kib": after - before, "reasons": reasons}))
"""


def test_hostile_images_are_refused_before_they_cost_memory(tmp_path: Path) -> None:
    folder = tmp_path / "door"
    folder.mkdir()
    for i, (_, make, _) in enumerate(HOSTILE):
        make(folder / f"{i}.jpg")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["reasons"] == {f"{i}.jpg": reason for i, (_, _, reason) in enumerate(HOSTILE)}
    # decoding 16000x3000 would take 144 MB, 7000x7000 147 MB, reading the still 60 MB
    assert found["peak_growth_kib"] < 32 * 1024, found


NAMES = [
    ("not UTF-8", os.fsdecode(b"person-\xff\xfe.jpg"), "person-\\xff\\xfe.jpg"),
    ("a newline", "person\nagent=forged camera=door rejected: evil.jpg", "person\\x0aagent="),
    ("an ANSI escape", "person\x1b[31mred\x1b[0m.jpg", "person\\x1b[31mred\\x1b[0m.jpg"),
    ("a line separator", "person\u2028next.jpg", "person\\u2028next.jpg"),
]


@pytest.mark.parametrize(("name", "shown"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_a_hostile_file_name_keeps_its_threat_and_never_forges_a_log_line(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture, name: str, shown: str
) -> None:
    folder = tmp_path / "door"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "x.jpg"), sample_still("person"))
    (folder / "x.jpg").rename(folder / name)
    (folder / f"{name}.jpg").write_bytes(b"not an image")  # rejected: its name is logged
    cameras = (
        f"  - name: door\n    source: {{type: directory, path: {folder}, watch: false}}\n"
        "    motion: {enabled: false}\n"
    )
    agent = build_agent(write_agent_config(tmp_path, broker, agent_id="names", cameras=cameras))
    caplog.set_level(logging.DEBUG)
    messages: list[ThreatFields] = []
    try:
        (camera,) = agent.cameras
        for frame in camera.source.frames():
            if frame is None:
                continue
            message = agent.process(camera, frame)
            if message is not None:
                messages.append(message)
    finally:
        agent.outbox.close()  # nothing else was started
    (message,) = messages  # the person was detected and the threat kept
    assert shown in message.frame.source
    assert message.frame.source == safe_text(str(folder / name))
    json.loads(dump_payload(message))  # valid UTF-8 JSON on the wire
    text = caplog.text
    assert "\x1b" not in text and "\u2028" not in text and "\udcff" not in text
    assert not any(line.startswith("agent=forged") for line in text.splitlines())
    assert camera.counters.as_dict()["rejected_wrong_format"] == 1
