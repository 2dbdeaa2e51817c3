"""A camera whose folder (or video file) is missing is reported down with the reason and tried
again with backoff, while the other cameras go on; once the folder is there, the camera runs.
A real ``secagent run`` against a real Mosquitto."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import cv2

from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for
from tests.support.ingest import subscribe_json
from tests.support.processes import BIN, write_agent_config


def test_a_missing_folder_is_down_and_retried_while_the_other_camera_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    yard, door = tmp_path / "yard", tmp_path / "share" / "door"
    yard.mkdir()
    assert cv2.imwrite(str(yard / "1.jpg"), sample_still("person"))
    config = write_agent_config(
        tmp_path,
        broker,
        agent_id="missing-host",
        cameras=(
            f"  - name: door\n    source: {{type: directory, path: {door}, retry_min_s: 0.2,"
            " retry_max_s: 0.5}\n    motion: {enabled: false}\n"
            f"  - name: yard\n    source: {{type: directory, path: {yard}}}\n"
            "    motion: {enabled: false}\n"
        ),
    )
    sub, statuses = subscribe_json(broker, "secagent/v1/missing-host/status")
    log = tmp_path / "secagent.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(BIN / "secagent"), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    try:

        def cameras() -> dict[str, dict[str, Any]]:
            assert proc.poll() is None, log.read_text()[-3000:]
            online = [s for s in statuses if s["state"] == "online"]
            return {c["name"]: c for c in online[-1]["cameras"]} if online else {}

        def door_down_yard_flowing() -> bool:
            cams = cameras()
            return bool(cams) and cams["yard"]["counters"]["threat_frames"] == 1

        wait_for(door_down_yard_flowing, timeout_s=120, what="yard's threat in a status")
        cams = cameras()
        assert cams["yard"]["state"] == "running"
        assert cams["door"]["state"] == "down"
        assert cams["door"]["detail"] == f"folder {door} does not exist"
        text = log.read_text()
        assert f"camera=door down: folder {door} does not exist; next try in" in text
        assert "Traceback" not in text

        door.mkdir(parents=True)
        assert cv2.imwrite(str(door / "1.jpg"), sample_still("person"))

        def door_running() -> bool:
            cam = cameras().get("door", {})
            return cam.get("state") == "running" and cam["counters"]["threat_frames"] == 1

        wait_for(door_running, timeout_s=60, what="door running with its threat")
        assert cameras()["door"]["detail"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        sub.loop_stop()
        sub.disconnect()
    assert proc.returncode == 0
