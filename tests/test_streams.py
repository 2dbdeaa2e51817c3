"""Live sources (RTSP/USB through OpenCV): reconnect with backoff when a stream cannot be opened or
breaks, a clear reason while down, and a prompt stop. The failing sources are real: a closed
localhost port, a missing device, a video file that is missing, then appears, then ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import redact_url
from agent.streams import StreamSource
from demo.broker import free_port
from tests.support import wait_for
from tests.support.streams import Reader, write_clip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:secret@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"),
        ("http://user@cam/mjpeg", "http://***@cam/mjpeg"),
        ("/var/video.mp4", "/var/video.mp4"),
    ],
)
def test_credentials_never_leave_the_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_a_stream_on_a_closed_port_is_down_and_retried_with_backoff() -> None:
    url = f"rtsp://user:pw@127.0.0.1:{free_port()}/live"
    source = StreamSource(
        "gate", target=url, fps=5, open_timeout_s=2, reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    assert source.name.startswith("rtsp://***@127.0.0.1:")
    reader = Reader(source)
    wait_for(lambda: source.failures >= 4, timeout_s=30, what="four failed attempts")
    assert source.down_reason == "cannot open the stream"
    assert source.next_attempt_in_s == 0.2  # 0.05, 0.1, 0.2, then capped
    assert reader.frames == [] and reader.nones >= 4
    assert reader.stop() < 3


def test_a_missing_usb_device_is_down() -> None:
    source = StreamSource("usb", target="/dev/video-none", fps=5, reconnect_min_s=0.05)
    reader = Reader(source)
    wait_for(lambda: source.failures >= 2, timeout_s=30, what="two failed attempts")
    assert source.down_reason == "cannot open the stream"
    reader.stop()


def test_a_stream_that_appears_then_ends_is_read_then_reopened(tmp_path: Path) -> None:
    clip = tmp_path / "cam.avi"
    source = StreamSource(
        "door", target=str(clip), fps=120, reconnect_min_s=0.05, reconnect_max_s=0.1
    )
    reader = Reader(source)
    wait_for(lambda: source.failures >= 2, timeout_s=30, what="the missing file to fail")
    assert source.connects == 0 and reader.frames == []

    write_clip(clip)  # the camera comes back
    wait_for(lambda: source.connects >= 1 and reader.frames, timeout_s=30, what="frames")
    first = reader.frames[0]
    assert first.kind == "video" and first.camera == "door"
    assert first.image is not None and first.image.shape == (120, 160, 3)
    assert first.source == f"{clip}#0"
    # the file ends: for a live source that is a broken stream, so it is reopened
    wait_for(lambda: source.connects >= 2, timeout_s=30, what="a reconnect after the end")
    assert reader.stop() < 3


def test_a_stream_keeps_only_fps_frames_a_second(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "long.avi", frames=60)
    source = StreamSource("x", target=str(clip), fps=1, reconnect_min_s=5)
    reader = Reader(source)
    wait_for(lambda: source.down_reason is not None and source.failures, timeout_s=30, what="end")
    # read in far less than a second: the first frame is kept, the rest skipped
    assert len(reader.frames) == 1
    reader.stop()
