"""Both daemons as systemd runs them (``Type=notify``, ``WatchdogSec``): real processes, a
notify socket the test opens, a real Mosquitto. READY=1 only once they serve, watchdog pings
only while they are alive (a stuck detection worker stops them), and SIGTERM mid-stream ends
them cleanly with exit 0 and nothing lost."""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from agent.synthetic import serial_of
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.models import stalling_model
from tests.support.notify import NotifySocket
from tests.support.processes import (
    BIN,
    AggregatorProcess,
    finish,
    start_test_threats,
    write_agent_config,
    write_aggregator_config,
)

WATCHDOG_S = 2.0


def count_rows(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def start_agent(config: Path, sock: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [str(BIN / "secagent"), "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=config.parent,
            env=sock.env(watchdog_s=WATCHDOG_S),
        )


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(path=tmp_path / "notify") as s:
        yield s


def test_agent_ready_watchdog_and_sigterm_mid_stream(
    broker: Mosquitto, clip_path: Path, sock: NotifySocket, tmp_path: Path
) -> None:
    config = write_agent_config(
        tmp_path,
        broker,
        agent_id="lifecycle-host",
        cameras=f"  - name: yard\n    source: {{type: video, path: {clip_path}, fps: 2}}\n",
    )
    outbox = tmp_path / "outbox.sqlite"
    proc = start_agent(config, sock, tmp_path / "secagent.log")
    try:
        ready = sock.wait("READY", "1")
        (ready_at,) = [t for t, _ in sock.received("READY", "1")]
        assert "CPUExecutionProvider" in ready["STATUS"]  # the model is loaded
        assert outbox.exists()  # the outbox is open
        assert sock.statuses(lambda s: s == "loading the model")  # said before it was ready
        # pings at half the watchdog interval, none before READY
        wait_for(lambda: len(sock.pings()) >= 3, timeout_s=10, what="three watchdog pings")
        pings = sock.pings()
        assert pings[0] >= ready_at
        assert all(0.9 <= b - a <= 2.5 for a, b in itertools.pairwise(pings)), pings
        # mid-stream: threats in the outbox (no aggregator here: nothing is receipted)
        wait_for(
            lambda: count_rows(outbox, "SELECT COUNT(*) FROM outbox") >= 3,
            timeout_s=120,
            what="threats in the outbox",
        )
        proc.send_signal(signal.SIGTERM)
        sock.wait("STOPPING", "1", timeout_s=10)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "secagent.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "stopped cleanly" in log and "Traceback" not in log
    summary = json.loads(out.decode().strip().splitlines()[-1])["summary"]
    assert 0 < summary["frames_read"] < 98  # stopped mid-clip
    # the outbox is closed and checkpointed (look before reading: a reader makes a WAL), and
    # every threat message the agent made is in it
    assert not Path(f"{outbox}-wal").exists()
    assert count_rows(outbox, "SELECT COUNT(*) FROM outbox") == summary["threat_messages"]


def test_a_stuck_detection_worker_stops_the_watchdog_pings(
    broker: Mosquitto, sock: NotifySocket, tmp_path: Path
) -> None:
    model = stalling_model(tmp_path / "stalling.onnx")
    manifest = tmp_path / "stalling.yaml"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    manifest.write_text(f"name: stalling\nfile: {model}\nsha256: {sha}\nlayout: yolov8\n")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = write_agent_config(
        tmp_path,
        broker,
        agent_id="stuck-host",
        model=manifest,
        cameras=(
            f"  - name: door\n    source: {{type: directory, path: {incoming}}}\n"
            "    motion: {enabled: false}\n"
        ),
    )
    proc = start_agent(config, sock, tmp_path / "secagent.log")
    try:
        sock.wait("READY", "1")  # the warm-up on a black frame does not stick
        wait_for(lambda: len(sock.pings()) >= 2, timeout_s=10, what="pings while idle")
        white = np.full((480, 640, 3), 255, np.uint8)
        cv2.imwrite(str(incoming / "bright.jpg"), white)  # the model sticks on this one
        stuck_at = time.monotonic()
        stuck = sock.wait("STATUS", None, timeout_s=30, after=stuck_at)
        wait_for(
            lambda: [s for s in sock.statuses() if "detection worker stuck" in s],
            timeout_s=30,
            what="a STATUS that says the worker is stuck",
        )
        said_at = max(t for t, m in sock.received("STATUS") if "STUCK" in m["STATUS"])
        # the main loop goes on (a later STATUS comes), and it never pings again
        sock.wait("STATUS", None, timeout_s=30, after=said_at + 0.01)
        assert not sock.pings(since=said_at), stuck
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "secagent.log").read_text()
    assert "not alive, watchdog pings stop" in log and "detection worker stuck" in log


AGENT = "sigterm-host"
N = 600


def stored_serials(db: Path) -> list[int]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT frame_id FROM messages WHERE agent_id = ? ORDER BY rowid", (AGENT,)
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [serial_of(r[0]) for r in rows]


def test_secagg_ready_watchdog_and_sigterm_mid_stream(sock: NotifySocket, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    config, api = write_aggregator_config(tmp_path, broker, client_id="secagg-sigterm")
    agent_conf = write_agent_config(
        tmp_path,
        broker,
        agent_id=AGENT,
        cameras=f"  - name: unused\n    source: {{type: directory, path: {tmp_path}}}\n",
    )
    db = tmp_path / "secagg.sqlite"
    log = tmp_path / "secagg.1.log"
    gen = None
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "secagg"), "serve", "--config", str(config), "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sock.env(watchdog_s=WATCHDOG_S),
        )
    try:
        sock.wait("READY", "1")
        # READY means the store is migrated and the API listens: it answers at once
        assert httpx.get(f"{api}/api/health", headers=HEADERS, timeout=5).status_code == 200
        wait_for(lambda: len(sock.pings()) >= 2, timeout_s=10, what="watchdog pings")
        gen = start_test_threats(agent_conf, count=N, rate_hz=150, cameras=2)
        wait_for(lambda: len(stored_serials(db)) >= 100, timeout_s=60, what="100 stored")
        # the API's read connections are open too: closed at the stop, so the WAL goes
        assert httpx.get(f"{api}/api/events", headers=HEADERS, timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        sock.wait("STOPPING", "1", timeout_s=10)
        proc.wait(timeout=30)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert not Path(f"{db}-wal").exists()
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        assert any(line["msg"] == "stopped cleanly" for line in lines)
        stored = [line for line in lines if line["msg"].startswith("stored message=")]
        assert stored and {"agent", "message", "lineage"} <= stored[0].keys()
        # a restart picks up the rest of the stream: all stored exactly once
        again = AggregatorProcess(config, api).start()
        try:
            summary = finish(gen)
            gen = None
            assert summary["outbox_depth"] == 0
            wait_for(lambda: len(stored_serials(db)) >= N, timeout_s=60, what="all stored")
            serials = stored_serials(db)
            assert sorted(serials) == list(range(N)), "lost or stored twice"
        finally:
            again.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        if gen is not None and gen.poll() is None:
            gen.kill()
        broker.stop()
