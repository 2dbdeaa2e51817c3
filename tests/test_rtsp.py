"""Live RTSP cameras against a real RTSP server (GStreamer's, serving a live H.264 test pattern
with basic auth): frames flow; a server that dies makes the camera down with the reason and
comes back within the backoff; a stream that stalls without closing is noticed within
``read_timeout_s``; credentials in the URL reach neither a log line nor an MQTT message."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.streams import StreamSource
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import subscribe_json
from tests.support.processes import BIN, write_agent_config
from tests.support.rtsp import RtspServer
from tests.support.streams import Reader, write_clip

USER, PASSWORD = "viewer", "s3cret-Pa55"
READ_TIMEOUT_S = 1.5
OPEN_TIMEOUT_S = 4.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 1.0
Cameras = dict[str, dict[str, Any]]
"""camera name -> its entry in a status message"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RtspServer]:
    with RtspServer(tmp_path, credentials=(USER, PASSWORD)) as s:
        yield s


def stream(
    url: str,
    *,
    fps: float = 10,
    read_timeout_s: float = READ_TIMEOUT_S,
    open_timeout_s: float = OPEN_TIMEOUT_S,
) -> StreamSource:
    return StreamSource(
        "gate",
        target=url,
        fps=fps,
        open_timeout_s=open_timeout_s,
        read_timeout_s=read_timeout_s,
        reconnect_min_s=RECONNECT_MIN_S,
        reconnect_max_s=RECONNECT_MAX_S,
    )


def test_frames_flow_from_a_live_stream_with_credentials(
    server: RtspServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    source = stream(server.url, fps=10)
    reader = Reader(source)
    try:
        wait_for(lambda: len(reader.frames) >= 12, timeout_s=20, what="12 frames")
    finally:
        reader.stop()
    frames = reader.frames[:12]
    assert source.connects == 1 and source.down_reason is None
    for frame in frames:
        assert frame.kind == "video" and frame.camera == "gate"
        assert frame.image is not None and frame.image.shape == (240, 320, 3)
        assert frame.source.startswith(f"rtsp://***@127.0.0.1:{server.port}/cam#")
    indexes = [int(f.source.rsplit("#", 1)[1]) for f in frames]
    assert indexes == sorted(set(indexes))
    # FFmpeg probed ~30 frames before the stream opened: they come at once, and the sampling
    # keeps #0 and skips the rest of them. Then 25 fps served, 10 kept: 0.1 s, 2.5 frames apart.
    assert indexes[-1] > 40, indexes
    span_s = (frames[-1].captured_at - frames[2].captured_at).total_seconds()
    assert 0.7 < span_s < 1.4, span_s
    assert 18 <= indexes[-1] - indexes[2] <= 30, indexes
    assert frames[0].image is not None and frames[-1].image is not None
    assert (frames[0].image != frames[-1].image).any()  # a live picture: the ball moves
    native = capfd.readouterr()
    assert PASSWORD not in caplog.text + native.out + native.err


def test_wrong_credentials_are_refused_and_never_shown(
    server: RtspServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = server.url.replace(PASSWORD, "Wr0ng-guess")
    source = stream(wrong)
    reader = Reader(source)
    try:
        wait_for(lambda: source.failures >= 2, timeout_s=20, what="two refused attempts")
    finally:
        reader.stop()
    assert reader.frames == [] and source.down_reason == "cannot open the stream"
    native = capfd.readouterr()
    assert "Wr0ng-guess" not in caplog.text + native.out + native.err
    assert "401" in native.err  # FFmpeg says why, without the URL


def test_a_killed_server_is_down_at_once_and_back_within_the_backoff(server: RtspServer) -> None:
    source = stream(server.url)
    reader = Reader(source)
    try:
        wait_for(lambda: len(reader.frames) >= 3, timeout_s=20, what="frames")
        server.kill()
        killed = time.monotonic()
        wait_for(lambda: source.down_reason is not None, timeout_s=10, what="down")
        down_after_s = time.monotonic() - killed
        assert source.down_reason == "the stream ended or broke"
        assert down_after_s < 1.0, down_after_s

        server.start()  # same port, as a camera that reboots
        restarted = time.monotonic()
        seen = len(reader.frames)
        wait_for(lambda: len(reader.frames) > seen, timeout_s=20, what="frames again")
        back_after_s = time.monotonic() - restarted
        assert source.down_reason is None and source.connects == 2
        # at most one backoff wait (capped at reconnect_max_s) plus FFmpeg's ~1.2 s probe
        assert back_after_s < RECONNECT_MAX_S + 2.5, back_after_s
        print(f"killed: down after {down_after_s:.2f} s; back {back_after_s:.2f} s after restart")
    finally:
        reader.stop()


def test_a_stream_that_stalls_without_closing_is_down_within_read_timeout(
    server: RtspServer,
) -> None:
    source = stream(server.url)
    reader = Reader(source)
    try:
        wait_for(lambda: len(reader.frames) >= 3, timeout_s=20, what="frames")
        server.stall()  # the TCP connection stays open; nothing more arrives
        stalled = time.monotonic()
        wait_for(lambda: source.down_reason is not None, timeout_s=30, what="the stall noticed")
        down_after_s = time.monotonic() - stalled
        assert source.down_reason == f"no frame for {READ_TIMEOUT_S:g} s"
        assert down_after_s < READ_TIMEOUT_S + 0.6, down_after_s

        server.resume()
        resumed = time.monotonic()
        seen = len(reader.frames)
        wait_for(lambda: len(reader.frames) > seen, timeout_s=30, what="frames again")
        back_after_s = time.monotonic() - resumed
        assert source.down_reason is None
        print(f"stalled: down after {down_after_s:.2f} s; resumed: back after {back_after_s:.2f} s")
    finally:
        reader.stop()


def test_stop_is_prompt_while_a_stream_stalls(server: RtspServer) -> None:
    source = stream(server.url, read_timeout_s=5)
    reader = Reader(source)
    wait_for(lambda: len(reader.frames) >= 3, timeout_s=20, what="frames")
    server.stall()
    seen = len(reader.frames)
    wait_for(lambda: len(reader.frames) == seen, timeout_s=5, what="the frames to stop coming")
    took_s = reader.stop()
    assert took_s < 1.0, took_s
    print(f"stopped during a stalled grab in {took_s:.3f} s")


def test_a_grabber_stopped_mid_stall_lets_go_of_the_stream_before_the_process_exits(
    server: RtspServer,
) -> None:
    source = stream(server.url)
    reader = Reader(source)  # a daemon thread, as the agent's camera threads are
    wait_for(lambda: len(reader.frames) >= 3, timeout_s=20, what="frames")
    grabbers = [t for t in threading.enumerate() if t.name == "grab-gate"]
    # a thread that returns from OpenCV while Python finalizes aborts the process: the
    # interpreter must wait for the grabber, so it is no daemon, whoever started it
    assert len(grabbers) == 1 and not grabbers[0].daemon
    server.stall()
    seen = len(reader.frames)
    wait_for(lambda: len(reader.frames) == seen, timeout_s=5, what="the frames to stop coming")
    reader.stop()
    # and it does not linger: it ends once OpenCV gives up (up to 3 x read_timeout_s)
    grabbers[0].join(timeout=3 * READ_TIMEOUT_S + 2)
    assert not grabbers[0].is_alive()


def test_stop_is_prompt_while_a_stream_opens(server: RtspServer) -> None:
    server.stall()  # it accepts the TCP connection, then never answers
    source = stream(server.url)
    reader = Reader(source)
    wait_for(
        lambda: any(t.name == "grab-gate" and t.is_alive() for t in threading.enumerate()),
        what="the grabber to be opening the stream",
    )
    took_s = reader.stop()
    assert took_s < 1.0, took_s
    assert source.connects == 0
    print(f"stopped during an open in {took_s:.3f} s")


def test_a_server_that_never_answers_holds_up_no_other_camera(
    server: RtspServer, tmp_path: Path
) -> None:
    # OpenCV opens one stream at a time in a process: an open that waits on a silent server
    # would hold up every other camera's open (a looping video, another camera reconnecting)
    clip = write_clip(tmp_path / "other.avi")
    server.stall()  # it accepts the TCP connection, then never answers
    source = stream(server.url, open_timeout_s=2)
    reader = Reader(source)
    try:
        wait_for(lambda: source.failures >= 1, timeout_s=20, what="the first attempt to fail")
        assert source.down_reason == "cannot open the stream: no answer in 2 s"
        took_s: list[float] = []

        def open_another_until_two_more_retries(retried: int = source.failures + 2) -> bool:
            started = time.monotonic()
            other = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
            took_s.append(time.monotonic() - started)
            assert other.isOpened()
            other.release()
            return source.failures >= retried

        wait_for(open_another_until_two_more_retries, timeout_s=30, what="two more retries")
        slowest_s, opens = max(took_s), len(took_s)
        assert slowest_s < 0.5, (slowest_s, opens)
        print(f"other camera: {opens} opens, slowest {slowest_s * 1000:.1f} ms")
    finally:
        reader.stop()


# --------------------------------------------------------------------- a real secagent process


def test_agent_reports_a_dead_camera_down_and_back_while_another_goes_on(
    server: RtspServer, broker: Mosquitto, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "yard.avi", frames=20)
    cameras = (
        "  - name: gate\n"
        f"    source: {{type: rtsp, url: '{server.url}', fps: 2, "
        f"open_timeout_s: {OPEN_TIMEOUT_S}, read_timeout_s: {READ_TIMEOUT_S}, "
        f"reconnect_min_s: {RECONNECT_MIN_S}, reconnect_max_s: {RECONNECT_MAX_S}}}\n"
        "  - name: yard\n"
        f"    source: {{type: video, path: {clip}, fps: 4, realtime: true, loop: true}}\n"
    )
    agent_id = "rtsp-agent"
    config = write_agent_config(
        tmp_path, broker, agent_id=agent_id, cameras=cameras, status_interval_s=0.3
    )
    sub, messages = subscribe_json(broker, "secagent/v1/#")
    stderr = tmp_path / "secagent.stderr"

    def when(check: Callable[[Cameras], bool], what: str, timeout_s: float = 20) -> Cameras:
        """The cameras of the agent's latest status message, once ``check`` holds for them."""

        def cameras() -> Cameras:
            statuses = [
                m
                for m in messages
                if m.get("schema", "").startswith("secagent.status/") and m["agent_id"] == agent_id
            ]
            return {c["name"]: c for c in statuses[-1]["cameras"]} if statuses else {}

        def latest() -> Cameras | None:
            now = cameras()
            return now if now and check(now) else None

        try:
            found = wait_for(latest, timeout_s=timeout_s, what=what)
        except pytest.fail.Exception:
            pytest.fail(
                f"no {what} after {timeout_s} s; cameras: {cameras()}\n"
                f"secagent stderr:\n{stderr.read_text()[-5000:]}"
            )
        assert found is not None
        return found

    with stderr.open("wb") as err:
        agent = subprocess.Popen(
            [str(BIN / "secagent"), "run", "--config", str(config), "--log-level", "debug"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
        )
    try:
        up = when(
            lambda c: c["gate"]["state"] == "running" and c["gate"]["counters"]["captured"] > 0,
            "gate running with frames",
            timeout_s=60,
        )
        assert up["yard"]["state"] == "running"

        server.kill()
        down = when(lambda c: c["gate"]["state"] == "down", "gate down")
        assert down["gate"]["detail"] in {"the stream ended or broke", "cannot open the stream"}
        yard_then = down["yard"]["counters"]["captured"]
        when(  # the other camera goes on while gate is down
            lambda c: (
                c["gate"]["state"] == "down" and c["yard"]["counters"]["captured"] > yard_then + 2
            ),
            "yard to go on while gate is down",
        )

        server.start()
        back = when(lambda c: c["gate"]["state"] == "running", "gate running again")
        captured = back["gate"]["counters"]["captured"]
        when(
            lambda c: (
                c["gate"]["state"] == "running" and c["gate"]["counters"]["captured"] > captured
            ),
            "gate frames again",
        )

        server.stall()
        stalled = when(lambda c: c["gate"]["state"] == "down", "gate down on a stall")
        assert stalled["gate"]["detail"] == f"no frame for {READ_TIMEOUT_S:g} s"
        server.resume()
        when(lambda c: c["gate"]["state"] == "running", "gate running after the stall", 30)
        server.stall()  # stopped while a grab() waits on a stalled stream
    finally:
        stopping = time.monotonic()
        agent.terminate()
        agent.wait(timeout=30)
        exit_s = time.monotonic() - stopping
        sub.loop_stop()
        sub.disconnect()
    # it waited for OpenCV to return (up to 3 x read_timeout_s): a thread that returns from
    # OpenCV while Python finalizes aborts the process
    assert agent.returncode == 0, stderr.read_text()[-3000:]
    assert exit_s < 3 * READ_TIMEOUT_S + 2, exit_s
    print(f"agent stopped mid-stall: exited 0 after {exit_s:.2f} s")
    log = stderr.read_text()
    assert "camera=gate" in log and "down" in log  # the log says it, without the password
    assert PASSWORD not in log
    assert messages and all(PASSWORD not in json.dumps(m) for m in messages)
