"""Helpers for tests that run the real `secagent` and `secagg` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from demo.broker import Mosquitto, free_port
from tests.conftest import DEFAULT_RULES, MODEL_MANIFEST, wait_for

BIN = Path(sys.executable).parent


def write_aggregator_config(
    work: Path, broker: Mosquitto, *, cutoff_s: float = 10, client_id: str = "secagg-test"
) -> tuple[Path, str]:
    port = free_port()
    path = work / "secagg.yaml"
    path.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {client_id}}}\n"
        "store: {path: secagg.sqlite, snapshots_dir: snapshots}\n"
        f"events: {{cutoff_s: {cutoff_s}, sweep_interval_s: 0.5}}\n"
        f"api: {{host: 127.0.0.1, port: {port}}}\n"
    )
    return path, f"http://127.0.0.1:{port}"


def write_agent_config(
    work: Path, broker: Mosquitto, *, agent_id: str, cameras: str, rules: Path = DEFAULT_RULES
) -> Path:
    path = work / "secagent.yaml"
    path.write_text(
        f"agent_id: {agent_id}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, status_interval_s: 2}}\n"
        f"detect: {{model: {MODEL_MANIFEST}, providers: [CPUExecutionProvider]}}\n"
        f"rules: {rules}\n"
        "outbox: {path: outbox.sqlite}\n"
        f"cameras:\n{cameras}"
    )
    return path


@contextmanager
def running_aggregator(config: Path, api: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``secagg serve`` as a real process, yielded once its API answers and MQTT is up."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "secagg"), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:

            def up() -> bool:
                assert proc.poll() is None, f"secagg exited: {log.read_text()[-3000:]}"
                try:
                    return bool(
                        httpx.get(f"{api}/api/health", timeout=1).json()["broker_connected"]
                    )
                except httpx.HTTPError:
                    return False

            wait_for(up, timeout_s=60, what="secagg to serve")
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_agent_to_completion(config: Path, *, timeout_s: float = 300) -> dict:
    """``secagent run --exit-when-done``; return its summary (the JSON last line)."""
    done = subprocess.run(
        [
            str(BIN / "secagent"),
            "run",
            "--config",
            str(config),
            "--exit-when-done",
            "--log-level",
            "info",
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=config.parent,
    )
    assert done.returncode == 0, f"secagent failed ({done.returncode}):\n{done.stderr[-4000:]}"
    (config.parent / "secagent.log").write_text(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])["summary"]
