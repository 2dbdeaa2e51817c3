"""The detection engine: bounded per-camera queues (latest frame wins for live cameras, wait for
files), frames of several cameras batched into one inference, and a broken camera that never
stops the others. Real threads, real ONNX Runtime sessions, real files, a real Mosquitto."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from agent.capture import Frame
from agent.config import CameraConfig, ValidateConfig
from agent.engine import Admitted, Camera, DetectionEngine, FrameQueues
from agent.pipeline import build_agent
from demo.broker import Mosquitto, free_port
from demo.footage import sample_still
from modelrt import Detections, Detector, load_manifest
from tests.support import wait_for
from tests.support.models import shifting_model
from tests.support.processes import write_agent_config

ROWS = np.asarray([[10, 10, 20, 30, 0.9, 0]], np.float32)  # end2end; x moves 100 px x grey/255


@pytest.fixture(scope="module")
def batch_detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    folder = tmp_path_factory.mktemp("model")
    model = shifting_model(folder / "m.onnx", ROWS, shift_columns=(0, 2), names="['person']")
    manifest = folder / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": "shift",
                "file": "m.onnx",
                "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                "layout": "end2end",
            }
        )
    )
    return Detector(load_manifest(manifest), providers=["CPUExecutionProvider"])


def stills(folder: Path, levels: list[int], *, size: int = 256) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, level in enumerate(levels):
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((size, size, 3), level, np.uint8))
    return folder


def camera(name: str, folder: Path, **fields: object) -> Camera:
    config = CameraConfig.model_validate(
        {
            "name": name,
            "source": {"type": "directory", "path": str(folder), "watch": False},
            "motion": {"enabled": False},
            **fields,
        }
    )
    return Camera(config)


def admitted(cam: Camera, detector: Detector, level: int, second: int) -> Admitted:
    image = np.full((256, 256, 3), level, np.uint8)
    tensor, lb = detector.preprocess(image)
    frame = Frame(
        camera=cam.name,
        kind="video",
        source=f"{cam.name}#{level}",
        captured_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second),
        image=image,
    )
    return Admitted(camera=cam, frame=frame, image=image, tensor=tensor, letterbox=lb)


# ---------------------------------------------------------------- the queues


def test_a_live_camera_keeps_its_latest_frame_and_counts_drops(
    tmp_path: Path, batch_detector: Detector
) -> None:
    cam = camera("live", stills(tmp_path / "a", []), when_busy="drop_oldest", queue_size=2)
    queues = FrameQueues([cam])
    stop = threading.Event()
    for second in range(5):
        assert queues.put(admitted(cam, batch_detector, second, second), stop=stop)
    assert cam.counters.dropped == 3
    taken = queues.take(8, timeout_s=1)
    assert [a.frame.source for a in taken] == ["live#3", "live#4"]


def test_a_file_camera_waits_for_room_instead_of_dropping(
    tmp_path: Path, batch_detector: Detector
) -> None:
    cam = camera("files", stills(tmp_path / "a", []))
    assert cam.drop_oldest is False
    queues = FrameQueues([cam])
    stop = threading.Event()
    assert queues.put(admitted(cam, batch_detector, 1, 1), stop=stop)
    second = threading.Thread(
        target=queues.put, args=(admitted(cam, batch_detector, 2, 2),), kwargs={"stop": stop}
    )
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "a full queue of a file camera must make it wait"
    assert [a.frame.source for a in queues.take(8, timeout_s=1)] == ["files#1"]
    second.join(timeout=10)
    assert not second.is_alive()
    assert [a.frame.source for a in queues.take(8, timeout_s=1)] == ["files#2"]
    assert cam.counters.dropped == 0


def test_take_serves_every_camera_before_any_camera_twice(
    tmp_path: Path, batch_detector: Detector
) -> None:
    busy = camera("busy", stills(tmp_path / "a", []), queue_size=3)
    quiet = camera("quiet", stills(tmp_path / "b", []))
    queues = FrameQueues([busy, quiet])
    stop = threading.Event()
    for second in (1, 2, 3):
        queues.put(admitted(busy, batch_detector, second, second), stop=stop)
    queues.put(admitted(quiet, batch_detector, 9, 9), stop=stop)
    assert [a.frame.source for a in queues.take(3, timeout_s=1)] == ["busy#1", "quiet#9", "busy#2"]
    assert [a.frame.source for a in queues.take(3, timeout_s=1)] == ["busy#3"]
    assert queues.take(3, timeout_s=0.05) == []


# ---------------------------------------------------------------- the engine's threads


def run_engine(
    cameras: list[Camera], detector: Detector
) -> tuple[DetectionEngine, list[tuple[str, str, Detections]]]:
    delivered: list[tuple[str, str, Detections]] = []
    lock = threading.Lock()

    def collect(a: Admitted, dets: Detections) -> None:
        with lock:
            delivered.append((a.camera.name, Path(a.frame.source).name, dets))

    stop = threading.Event()
    engine = DetectionEngine(
        detector,
        cameras,
        validate=ValidateConfig(),
        on_detections=collect,
        stop=stop,
    )
    engine.start()
    try:
        assert engine.wait_idle(60), "the engine did not finish the frames"
    finally:
        stop.set()
        engine.join()
    return engine, delivered


def test_frames_of_several_cameras_share_one_batched_model(
    tmp_path: Path, batch_detector: Detector
) -> None:
    levels = {"a": [0, 51, 102], "b": [153, 204], "c": [255, 0, 51, 102]}
    cameras = [camera(n, stills(tmp_path / n, lv)) for n, lv in levels.items()]
    engine, delivered = run_engine(cameras, batch_detector)

    assert len(delivered) == 9
    assert engine.batched_frames == 9 and 1 <= engine.batches <= 9
    for name, file, dets in delivered:
        level = levels[name][int(file[:3])]
        dx = 100 * level / 255
        np.testing.assert_allclose(dets.xyxy, [[10 + dx, 10, 20 + dx, 30]], atol=0.5)
        assert dets.labels == ("person",)
    for cam in cameras:
        counts = cam.counters.as_dict()
        assert counts["captured"] == counts["detected"] == len(levels[cam.name])
        assert counts["dropped"] == counts["failed"] == 0
        assert cam.state == "finished"


def test_a_live_camera_that_outruns_the_model_drops_its_oldest_frames(
    tmp_path: Path, sample_detector: Detector
) -> None:
    # 30 tiny stills are admitted in a few ms each; the real model takes ~90 ms per frame
    cam = camera("fast", stills(tmp_path / "s", [i * 8 for i in range(30)], size=64))
    cam.drop_oldest = True
    engine, delivered = run_engine([cam], sample_detector)
    counts = cam.counters.as_dict()
    assert counts["captured"] == 30
    assert counts["dropped"] > 0
    assert counts["detected"] + counts["dropped"] == 30
    assert len(delivered) == counts["detected"]
    assert engine.idle()


# ---------------------------------------------------------------- a broken camera in an agent


def test_a_broken_camera_never_stops_the_others(tmp_path: Path, broker: Mosquitto) -> None:
    door = tmp_path / "door"
    door.mkdir()
    for name, kind in (("1-empty.jpg", "empty"), ("2-person.jpg", "person")):
        assert cv2.imwrite(str(door / name), sample_still(kind))
    cameras = (
        f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n"
        "  - name: gate\n"
        f"    source: {{type: rtsp, url: 'rtsp://admin:pw@127.0.0.1:{free_port()}/live',"
        " reconnect_min_s: 0.05, reconnect_max_s: 0.2}\n"
    )
    config = write_agent_config(tmp_path, broker, agent_id="broken-cam", cameras=cameras)
    agent = build_agent(config)
    agent.start()
    try:
        door_cam, gate_cam = agent.cameras
        wait_for(
            lambda: door_cam.state == "finished" and agent.engine.queues.waiting() == 0,
            timeout_s=60,
            what="the good camera to finish",
        )
        wait_for(lambda: door_cam.counters.threat_frames == 1, timeout_s=60, what="a threat")
        status = agent.status("online")
        by_name = {c.name: c for c in status.cameras}
        assert by_name["gate"].state == "down"
        assert by_name["gate"].detail == "cannot open the stream"
        assert "pw" not in status.model_dump_json()
        assert by_name["door"].state == "finished" and by_name["door"].detail is None
        assert by_name["door"].counters["detected"] == 2
        assert status.inference_ms is not None and status.inference_ms > 0
        assert gate_cam.counters.captured == 0
    finally:
        agent.stop()
        agent.shutdown()
    summary = agent.summary()
    assert summary["frames_read"] == 2 and summary["threat_messages"] == 1
