"""Over-the-air tests: a release site (real ``secagg`` with its signed repository, made by the
real ``secagg ota init``), real ``secagent`` processes that follow it, tiny models whose output
is known, and a camera folder fed with stills while an update happens."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from demo.broker import Mosquitto
from tests.support import DEFAULT_RULES, wait_for
from tests.support.auth import HEADERS
from tests.support.models import calibrated_trips, constant_model, slow_model
from tests.support.processes import BIN, AggregatorProcess, write_aggregator_config

LABELS = "['person', 'person_fallen']"


def tiny_model(
    folder: Path,
    name: str,
    *,
    x: float,
    score: float = 0.9,
    names: str = LABELS,
    width: int = 640,
    padding_bytes: int = 0,
) -> Path:
    """A manifest of a constant YOLOv8 model: one ``person`` box centred at ``x`` (model-input
    pixels) with ``score`` on every frame; ``padding_bytes`` of random text in its metadata make
    its file that much larger (a download that takes a while)."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = len(yaml.safe_load(names.replace("'", '"')) or [])
    row = [x, 320, 100, 200, score] + [0.0] * (classes - 1)
    padding = np.random.default_rng(11).bytes(padding_bytes // 2).hex()
    onnx = constant_model(
        folder / f"{name}.onnx",
        np.asarray([row], np.float32).T[None],
        names=names,
        width=width,
        metadata={"padding": padding} if padding else None,
    )
    return yolov8_manifest(onnx, name)


def bright_failing_model(folder: Path, name: str, *, x: float, above: float = 0.7) -> Path:
    """A manifest of a YOLOv8 model with one ``person`` box at ``x`` that fails (ONNX Runtime
    raises) on frames whose mean input is ``above`` or more: dark frames pass its trial, bright
    ones break it during probation."""
    folder.mkdir(parents=True, exist_ok=True)
    row = np.asarray([x, 320, 100, 200, 0.9, 0.0], np.float32)

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")
        )

    nodes = [
        const("row", row),
        const("ten", np.array(10, np.float32)),
        const("table", np.zeros(int(above * 10), np.float32)),
        const("shape", np.array([1, 6, 1], np.int64)),
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        # index = floor(10 x mean): out of the table's range on bright frames -> ORT raises
        helper.make_node("Mul", ["mean", "ten"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
        helper.make_node("Add", ["row", "picked"], ["data"]),
        helper.make_node("Reshape", ["data", "shape"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bright_failing",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, "anchors"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": LABELS})
    onnx.checker.check_model(model)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    return yolov8_manifest(onnx_path, name)


def slow_bright_model(folder: Path, name: str, *, x: float, bright_ms: float) -> Path:
    """A manifest of :func:`tests.support.models.slow_model`: one ``person`` box at ``x``,
    about 1 ms on a dark frame, at least ``bright_ms`` on a bright one (calibrated here; a
    busier machine only makes it slower)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = slow_model(
        folder / f"{name}.onnx", trips=calibrated_trips(folder, at_least_ms=bright_ms), x=x
    )
    return yolov8_manifest(onnx_path, name)


def yolov8_manifest(onnx_path: Path, name: str) -> Path:
    """The manifest ``<name>.yaml`` beside ``onnx_path``: a YOLOv8 layout, its sha256."""
    manifest = onnx_path.parent / f"{name}.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "file": onnx_path.name,
                "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                "layout": "yolov8",
            }
        )
    )
    return manifest


def model_sha(manifest: Path) -> str:
    return str(yaml.safe_load(manifest.read_text())["sha256"])


class OtaSite:
    """secagg with OTA on, its keys, and configs for agents that follow it."""

    release: dict[str, Any]
    """A release a test module made for all its tests (when it made one)."""

    def __init__(
        self,
        work: Path,
        broker: Mosquitto,
        *,
        timestamp_expiry_s: float = 3600,
        refresh_interval_s: float = 0.5,
    ) -> None:
        self.work = work
        self.broker = broker
        work.mkdir(parents=True, exist_ok=True)
        self.config, self.api = write_aggregator_config(
            work,
            broker,
            client_id=f"secagg-{work.name}"[:60],
            extra_yaml=(
                f"ota: {{enabled: true, timestamp_expiry_s: {timestamp_expiry_s}, "
                f"refresh_interval_s: {refresh_interval_s}}}\n"
            ),
        )
        self.keys = work / "keys"
        self.secagg("ota", "init", "--keys", str(self.keys))
        self.aggregator = AggregatorProcess(self.config, self.api)

    def secagg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "secagg"), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.work,
        )
        if check:
            assert done.returncode == 0, f"secagg {args} failed:\n{done.stderr[-3000:]}"
        return done

    def add_release(
        self, kind: str, path: Path, *extra: str, tag: str | None = None
    ) -> dict[str, Any]:
        args = ["release", "add", kind, str(path), "--targets-key", str(self.keys / "targets.pem")]
        done = self.secagg(*args, *(["--tag", tag] if tag else []), *extra)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def rollout(self, release_id: int, *args: str) -> dict[str, Any]:
        done = self.secagg("rollout", "create", str(release_id), *args)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def token(self, agent_id: str) -> str:
        return self.secagg("ota", "token", agent_id).stdout.strip()

    def agent_config(
        self,
        folder: Path,
        *,
        agent_id: str,
        model: Path,
        camera_dir: Path,
        rules: Path = DEFAULT_RULES,
        ota: dict[str, Any] | None = None,
    ) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(self.token(agent_id) + "\n")
        doc = {
            "agent_id": agent_id,
            "mqtt": {
                "host": self.broker.host,
                "port": self.broker.port,
                "status_interval_s": 1,
                "receipt_timeout_s": 5,
            },
            "outbox": {"path": "outbox.sqlite"},
            "detect": {"model": str(model), "providers": ["CPUExecutionProvider"]},
            "rules": str(rules),
            "snapshot": {"enabled": False},
            "cameras": [
                {
                    "name": "door",
                    "source": {"type": "directory", "path": str(camera_dir), "settle_s": 0},
                    "motion": {"enabled": False},
                }
            ],
            "ota": {
                "enabled": True,
                "url": f"{self.api}/ota/v1",
                "trusted_root": str(self.keys / "root.json"),
                "token_file": "token",
                "probation_s": 2,
                "check_interval_s": 2,
                "socket_timeout_s": 5,
                "download_timeout_s": 30,
                **(ota or {}),
            },
        }
        path = folder / "secagent.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    # reading what the aggregator knows -------------------------------------------------------
    def history(self, agent_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.api}/api/agents/{agent_id}/history", headers=HEADERS, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def wait_rollout(self, rollout_id: int, state: str, *, timeout_s: float = 60) -> None:
        """Until ``secagg serve`` has moved the rollout to ``state`` (it acts every
        ``ota.refresh_interval_s``)."""

        def reached() -> bool:
            r = httpx.get(f"{self.api}/api/rollouts/{rollout_id}", headers=HEADERS, timeout=10)
            return r.status_code == 200 and r.json()["state"] == state

        wait_for(reached, timeout_s=timeout_s, what=f"rollout {rollout_id} {state}")

    def agent_known(self, agent_id: str) -> bool:
        """The aggregator has the agent's status (and so its config in force, and labels)."""
        return (
            httpx.get(f"{self.api}/api/agents/{agent_id}", headers=HEADERS, timeout=10).status_code
            == 200
        )

    def reports(self, agent_id: str) -> list[dict[str, Any]]:
        return list(self.history(agent_id)["reports"])

    def wait_report(
        self, agent_id: str, *, release_id: int | None, state: str, timeout_s: float = 60
    ) -> dict[str, Any]:
        """The first report of ``state`` about ``release_id`` (None: about no release, such
        as going back to what the agent was installed with)."""

        def found() -> dict[str, Any] | None:
            for r in self.reports(agent_id):
                if r["state"] == state and r["release_id"] == release_id:
                    return r
            return None

        report = wait_for(
            found, timeout_s=timeout_s, what=f"{agent_id} to report {state} of {release_id}"
        )
        assert report is not None
        return report

    def messages(self, agent_id: str) -> list[sqlite3.Row]:
        """Threat messages stored for the agent, in frame order (file names are numbered)."""
        conn = sqlite3.connect(f"file:{self.work / 'secagg.sqlite'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return list(
                conn.execute(
                    "SELECT frame_source, frame_id, model_sha256, rules_sha256, config_sha256 "
                    "FROM messages WHERE agent_id = ? ORDER BY frame_source",
                    (agent_id,),
                )
            )
        finally:
            conn.close()


class AgentProcess:
    """``secagent run`` as a real process that a test can stop, kill and start again."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, env: dict[str, str] | None = None) -> AgentProcess:
        self.starts += 1
        log = (self.config.parent / f"secagent.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "secagent"), "run", "--config", str(self.config), "--log-level", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
            env={**os.environ, **self.env, **(env or {})},
        )
        log.close()
        return self

    def log(self) -> str:
        return "\n".join(
            (self.config.parent / f"secagent.{i}.log").read_text(errors="replace")
            for i in range(1, self.starts + 1)
        )

    def wait_exit(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


class StillFeeder:
    """Writes numbered, distinct JPEG stills into a camera folder at a steady pace."""

    def __init__(
        self, folder: Path, *, every_s: float = 0.05, levels: tuple[int, int] = (0, 255)
    ) -> None:
        self.folder = folder
        self.levels = levels
        """Pixel values are drawn from this range (a bright or a dark scene)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.every_s = every_s
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._rng = np.random.default_rng(7)

    def write(self, count: int) -> None:
        for _ in range(count):
            low, high = self.levels
            image = self._rng.integers(low, high, (120, 160, 3), dtype=np.uint8)
            ok, buf = cv2.imencode(".jpg", image)
            assert ok
            tmp = self.folder / f".{self.written:05d}.tmp"
            tmp.write_bytes(buf.tobytes())
            tmp.rename(self.folder / f"{self.written:05d}.jpg")
            self.written += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write(1)

    def start(self) -> StillFeeder:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.written
