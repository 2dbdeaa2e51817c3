"""The folder source (agent.folder): inotify and polling, dated subfolders, entries that are no
stills, the record of processed files (durable, pruned), a folder that is missing for a while;
and a real ``secagent run`` restarted (and killed) on the same folder."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.capture import Frame, VideoFileSource
from agent.config import CameraConfig, DirectorySourceConfig, ValidateConfig, VideoSourceConfig
from agent.engine import Camera, DetectionEngine
from agent.filesystems import filesystem_type
from agent.folder import DirectorySource
from agent.ledger import MemoryLedger, SqliteLedger, all_rows
from agent.outbox import Outbox
from demo.broker import Mosquitto
from demo.footage import sample_still
from modelrt import Detector
from tests.support import wait_for
from tests.support.processes import BIN, write_agent_config

JPEG = cv2.imencode(".jpg", sample_still("empty"))[1].tobytes()
MODES = ["inotify", "poll"]


def folder_source(folder: Path, **fields: object) -> DirectorySource:
    ledger = fields.pop("ledger", None)
    config = DirectorySourceConfig.model_validate(
        {"type": "directory", "path": folder, "poll_s": 0.05, "settle_s": 30, **fields}
    )
    return DirectorySource("door", config, ledger=ledger)  # type: ignore[arg-type]


class Reader:
    """Drives a source's ``frames()`` on the test thread; ``done`` marks frames processed, as
    the engine does once it is through with them."""

    def __init__(self, source: DirectorySource) -> None:
        self.source = source
        self.frames: Iterator[Frame | None] = source.frames()
        self.got: list[Frame] = []

    def until(self, count: int, *, what: str) -> list[Frame]:
        def enough() -> bool:
            frame = next(self.frames)
            if frame is not None:
                self.got.append(frame)
                self.source.done(frame)
            return len(self.got) >= count

        wait_for(enough, timeout_s=20, what=what)
        return self.got

    def names(self) -> list[str]:
        return [Path(f.source).relative_to(self.source.root).as_posix() for f in self.got]

    def close(self) -> None:
        self.source.stop.set()
        for _ in self.frames:
            pass


@pytest.mark.parametrize("mode", MODES)
def test_new_files_are_taken_once_oldest_first(tmp_path: Path, mode: str) -> None:
    (tmp_path / "0-old.jpg").write_bytes(JPEG)
    reader = Reader(folder_source(tmp_path, watch_mode=mode))
    try:
        reader.until(1, what="the file already there")
        assert reader.source.mode == mode
        for name in ("1-new.jpg", "2-newer.png.tmp", ".3-hidden.jpg", "4-notes.txt"):
            (tmp_path / name).write_bytes(JPEG)
        (tmp_path / "5-renamed.jpg.part").write_bytes(JPEG)
        (tmp_path / "5-renamed.jpg.part").rename(tmp_path / "5-renamed.jpg")
        reader.until(3, what="the new files")
        assert reader.names() == ["0-old.jpg", "1-new.jpg", "5-renamed.jpg"]
        assert all(f.data == JPEG for f in reader.got)
    finally:
        reader.close()


@pytest.mark.parametrize("mode", MODES)
def test_pipes_links_and_folders_named_like_stills_are_rejected_never_opened(
    tmp_path: Path, mode: str
) -> None:
    reader = Reader(folder_source(tmp_path, watch_mode=mode))
    try:
        next(reader.frames)  # watching
        os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
        (tmp_path / "real.jpg").write_bytes(JPEG)
        (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
        (tmp_path / "folder.jpg").mkdir()
        reader.until(4, what="every entry")
        by_name = {Path(f.source).name: f for f in reader.got}
        assert by_name["real.jpg"].data == JPEG and by_name["real.jpg"].rejected is None
        assert {name: f.rejected for name, f in by_name.items() if name != "real.jpg"} == {
            "pipe.jpg": ("not_a_file", "a named pipe, not a regular file"),
            "link.jpg": ("not_a_file", "a symbolic link, not a regular file"),
            "folder.jpg": ("not_a_file", "a folder, not a regular file"),
        }
        (tmp_path / "after.jpg").write_bytes(JPEG)  # reported once: the next frame is a new file
        reader.until(5, what="a file after them")
        assert Path(reader.got[-1].source).name == "after.jpg"
    finally:
        reader.close()


@pytest.mark.parametrize("mode", MODES)
def test_dated_subfolders_with_recursive(tmp_path: Path, mode: str) -> None:
    day = tmp_path / "2026" / "11" / "27"
    day.mkdir(parents=True)
    (day / "0900.jpg").write_bytes(JPEG)
    (tmp_path / ".trash").mkdir()
    (tmp_path / ".trash" / "old.jpg").write_bytes(JPEG)
    reader = Reader(folder_source(tmp_path, watch_mode=mode, recursive=True))
    try:
        reader.until(1, what="the still in an existing dated folder")
        new_day = tmp_path / "2026" / "11" / "28"
        new_day.mkdir()
        (new_day / "0001.jpg").write_bytes(JPEG)
        reader.until(2, what="the still in a new dated folder")
        assert reader.names() == ["2026/11/27/0900.jpg", "2026/11/28/0001.jpg"]
        assert reader.got[1].file is not None and reader.got[1].file.key == "2026/11/28/0001.jpg"
    finally:
        reader.close()


def test_without_recursive_subfolders_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "2026").mkdir()
    (tmp_path / "2026" / "a.jpg").write_bytes(JPEG)
    (tmp_path / "b.jpg").write_bytes(JPEG)
    frames = folder_source(tmp_path, watch=False).poll(take_all=True)
    assert [Path(f.source).name for f in frames] == ["b.jpg"]


@pytest.mark.parametrize("mode", MODES)
def test_processed_files_are_remembered_in_the_outbox_database_and_pruned(
    tmp_path: Path, mode: str
) -> None:
    folder = tmp_path / "door"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(JPEG)
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20)
    ledger = SqliteLedger(outbox)
    reader = Reader(folder_source(folder, watch_mode=mode, ledger=ledger, rescan_s=1))
    reader.until(3, what="three stills")
    reader.close()
    assert sorted(k for k, _ in all_rows(ledger, "door")) == ["a.jpg", "b.jpg", "c.jpg"]

    # a new source on the same database (a restart) takes only what is new or changed
    (folder / "d.jpg").write_bytes(JPEG)
    (folder / "b.jpg").write_bytes(JPEG + b"\x00")  # rewritten: a new still under an old name
    (folder / "c.jpg").unlink()
    reader = Reader(folder_source(folder, watch_mode=mode, ledger=ledger, rescan_s=1))
    try:
        reader.until(2, what="the new and the rewritten still")
        assert sorted(reader.names()) == ["b.jpg", "d.jpg"]
        wait_for(
            lambda: (
                next(reader.frames) is None
                and sorted(k for k, _ in all_rows(ledger, "door")) == ["a.jpg", "b.jpg", "d.jpg"]
            ),
            what="the gone file's row pruned",
        )
        (folder / "a.jpg").unlink()
        wait_for(
            lambda: (
                next(reader.frames) is None
                and sorted(k for k, _ in all_rows(ledger, "door")) == ["b.jpg", "d.jpg"]
            ),
            what="a file deleted while watching forgotten",
        )
    finally:
        reader.close()
        outbox.close()


def test_existing_skip_skips_what_is_there_at_the_first_start_only(tmp_path: Path) -> None:
    (tmp_path / "old.jpg").write_bytes(JPEG)
    ledger = MemoryLedger()
    source = folder_source(tmp_path, existing="skip", ledger=ledger)
    assert source.poll() == []
    (tmp_path / "new.jpg").write_bytes(JPEG)
    assert [Path(f.source).name for f in source.poll()] == ["new.jpg"]


def test_a_missing_folder_is_down_then_runs_once_it_appears(tmp_path: Path) -> None:
    folder = tmp_path / "share" / "door"
    source = folder_source(folder, retry_min_s=0.05, retry_max_s=0.1)
    reader = Reader(source)
    try:
        assert next(reader.frames) is None
        assert source.down_reason == f"folder {folder} does not exist"
        assert not source.finished
        folder.mkdir(parents=True)
        (folder / "first.jpg").write_bytes(JPEG)
        reader.until(1, what="the camera to run once the folder is there")
        assert source.down_reason is None and source.mode == "inotify"
    finally:
        reader.close()


def test_a_missing_video_is_down_then_read_once_it_appears(tmp_path: Path, clip_path: Path) -> None:
    video = tmp_path / "yard.avi"
    config = VideoSourceConfig.model_validate(
        {"type": "video", "path": video, "fps": 1, "retry_min_s": 0.05, "retry_max_s": 0.1}
    )
    source = VideoFileSource("yard", config)
    frames = source.frames()
    assert next(frames) is None
    assert source.down_reason == f"video {video} does not exist"
    video.symlink_to(clip_path)
    got = [f for f in frames if f is not None]
    assert len(got) > 10 and source.finished and source.down_reason is None


def test_a_looping_video_stops_reading_once_stopped(clip_path: Path) -> None:
    """A stop ends a looping video's read for good: it never opens the file again (it used to
    reopen it at once, without yielding, so the camera thread never saw the stop)."""
    stop = threading.Event()
    config = VideoSourceConfig.model_validate(
        {"type": "video", "path": clip_path, "fps": 2, "loop": True}
    )
    source = VideoFileSource("yard", config, stop=stop)
    seen: list[Frame | None] = []

    def read() -> None:
        for frame in source.frames():
            seen.append(frame)
            if len(seen) == 3:
                stop.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: not reader.is_alive(), timeout_s=10, what="the looping video to stop")
    assert len(seen) == 3


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/cam\\040share rw,relatime shared:20 - nfs4 nas:/export/cams rw,vers=4.2
41 22 0:36 / /mnt/smb rw,relatime shared:21 - cifs //nas/cams rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/lib/secagent/incoming", "ext4"),
        ("/mnt/cam share/door", "nfs4"),
        ("/mnt/cam share", "nfs4"),
        ("/mnt/smb/x/y", "cifs"),
        ("/mnt/smbx", "ext4"),
    ],
)
def test_the_file_system_type_decides_auto(path: str, expected: str) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == expected


# ---------------------------------------------------------------- a real agent, restarted


def stop_agent(proc: subprocess.Popen[str], sig: signal.Signals) -> dict[str, Any] | None:
    """Stop ``secagent run``; its summary (JSON last line) when it could print one."""
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    lines = out.strip().splitlines()
    return json.loads(lines[-1])["summary"] if lines else None


def outbox_rows(outbox: Path, sql: str) -> int:
    if not outbox.exists():
        return 0
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_a_restarted_agent_processes_each_kept_still_once(
    tmp_path: Path, broker: Mosquitto
) -> None:
    folder = tmp_path / "door"
    folder.mkdir()
    for i in range(3):
        assert cv2.imwrite(str(folder / f"{i}.jpg"), sample_still("person"))
    config = write_agent_config(
        tmp_path,
        broker,
        agent_id="restart-host",
        cameras=(
            f"  - name: door\n    source: {{type: directory, path: {folder}}}\n"
            "    motion: {enabled: false}\n"
        ),
    )
    outbox = tmp_path / "outbox.sqlite"
    messages = "SELECT COUNT(*) FROM outbox"  # no aggregator: nothing is receipted, all stay
    processed = "SELECT COUNT(*) FROM processed_files"

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BIN / "secagent"), "run", "--config", str(config), "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    first = start()
    wait_for(lambda: outbox_rows(outbox, processed) == 3, timeout_s=120, what="3 stills")
    assert stop_agent(first, signal.SIGKILL) is None  # killed: no summary, no clean shutdown
    assert outbox_rows(outbox, messages) == 3

    assert cv2.imwrite(str(folder / "3.jpg"), sample_still("person"))  # came while it was down
    second = start()
    wait_for(lambda: outbox_rows(outbox, processed) == 4, timeout_s=120, what="the new still")
    summary = stop_agent(second, signal.SIGTERM)
    assert summary is not None
    assert summary["frames_read"] == 1 and summary["threat_messages"] == 1
    assert outbox_rows(outbox, messages) == 4  # 4 threats for 4 stills, over two runs


def test_a_pipe_is_counted_under_the_cameras_rejections_and_logged(
    tmp_path: Path, sample_detector: Detector, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "door"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    config = CameraConfig.model_validate(
        {"name": "door", "source": {"type": "directory", "path": folder, "watch": False}}
    )
    camera = Camera(config)
    engine = DetectionEngine(
        sample_detector,
        [camera],
        validate=ValidateConfig(),
        on_detections=lambda admitted, detections: None,
        stop=threading.Event(),
        agent_id="host-1",
    )
    caplog.set_level(logging.WARNING, logger="agent.engine")
    frames = [f for f in camera.source.frames() if f is not None]
    assert [engine.admit(camera, f) for f in frames] == [None]
    assert camera.counters.as_dict()["rejected_not_a_file"] == 1
    assert f"source='{folder / 'pipe.jpg'}' rejected: not_a_file: a named pipe" in caplog.text
    assert "agent=host-1 camera=door frame=" in caplog.text
