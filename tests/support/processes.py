"""Helpers for tests that run the real `secagent` and `secagg` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from demo.broker import Mosquitto, free_port
from tests.support import DEFAULT_RULES, MODEL_MANIFEST, wait_for
from tests.support.auth import HEADERS, seed_tokens

BIN = Path(sys.executable).parent


def write_aggregator_config(
    work: Path,
    broker: Mosquitto,
    *,
    cutoff_s: float = 10,
    client_id: str = "secagg-test",
    extra_yaml: str = "",
    store_yaml: str = "",
) -> tuple[Path, str]:
    """``store_yaml``: more of the ``store`` section (``snapshots: {keep: all}``)."""
    port = free_port()
    path = work / "secagg.yaml"
    more = f", {store_yaml}" if store_yaml else ""
    path.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {client_id}}}\n"
        f"store: {{path: secagg.sqlite, snapshots_dir: snapshots{more}}}\n"
        f"events: {{cutoff_s: {cutoff_s}, sweep_interval_s: 0.5}}\n"
        f"api: {{host: 127.0.0.1, port: {port}}}\n" + extra_yaml
    )
    seed_tokens(work / "secagg.sqlite")  # the tests' API calls send HEADERS
    return path, f"http://127.0.0.1:{port}"


def write_agent_config(
    work: Path,
    broker: Mosquitto,
    *,
    agent_id: str,
    cameras: str,
    rules: Path = DEFAULT_RULES,
    model: Path = MODEL_MANIFEST,
    outbox_max_bytes: int = 256 * 1024 * 1024,
    status_interval_s: float = 2,
) -> Path:
    path = work / "secagent.yaml"
    path.write_text(
        f"agent_id: {agent_id}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, "
        f"status_interval_s: {status_interval_s}, "
        "receipt_timeout_s: 5}\n"
        f"outbox: {{path: outbox.sqlite, max_bytes: {outbox_max_bytes}}}\n"
        f"detect: {{model: {model}, providers: [CPUExecutionProvider]}}\n"
        f"rules: {rules}\n"
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
                        httpx.get(f"{api}/api/health", headers=HEADERS, timeout=1).json()[
                            "broker_connected"
                        ]
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


def run_agent_to_completion(config: Path, *, timeout_s: float = 300) -> dict[str, Any]:
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
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])["summary"]
    return summary


class AggregatorProcess:
    """``secagg serve`` that a test can kill (SIGKILL) and start again on the same config."""

    def __init__(self, config: Path, api: str) -> None:
        self.config, self.api = config, api
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AggregatorProcess:
        self.starts += 1
        log = (self.config.parent / f"secagg.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "secagg"), "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.ready, timeout_s=60, what="secagg to serve and subscribe")
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "secagg exited"
        try:
            return bool(
                httpx.get(f"{self.api}/api/health", headers=HEADERS, timeout=1).json()[
                    "broker_connected"
                ]
            )
        except httpx.HTTPError:
            return False

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = httpx.get(
            f"{self.api}/api/health", headers=HEADERS, timeout=5
        ).json()
        return health

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.api}/api/agents/{agent_id}", headers=HEADERS, timeout=5)
        return r.json() if r.status_code == 200 else None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_test_threats(
    config: Path,
    *,
    count: int,
    start: int = 0,
    cameras: int = 3,
    rate_hz: float = 0,
    drain_timeout_s: float = 120,
) -> subprocess.Popen[str]:
    """``secagent send-test-threats`` as a real process (numbered threats through the outbox)."""
    return subprocess.Popen(
        [
            str(BIN / "secagent"),
            "send-test-threats",
            "--config",
            str(config),
            "--count",
            str(count),
            "--start",
            str(start),
            "--cameras",
            str(cameras),
            "--rate",
            str(rate_hz),
            "--drain-timeout",
            str(drain_timeout_s),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )


def finish(proc: subprocess.Popen[str], *, timeout_s: float = 180) -> dict[str, Any]:
    """Wait for a send-test-threats process; return its summary."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"send-test-threats exited {proc.returncode}:\n{err[-3000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])["summary"]
    return summary


class ServeProcess:
    """One ``secagg serve --role ROLE [--worker NAME]`` process of several on one store, that a
    test can SIGKILL and start again. An ingest worker serves no API: it is up once its log says
    it is ready (connected and subscribed)."""

    def __init__(self, config: Path, *, role: str, worker: str | None = None) -> None:
        self.config, self.role, self.worker = config, role, worker
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.name = worker or role

    @property
    def log(self) -> Path:
        return self.config.parent / f"secagg-{self.name}.{self.starts}.log"

    def start(self, *, wait: bool = True) -> ServeProcess:
        self.starts += 1
        args = [str(BIN / "secagg"), "serve", "--config", str(self.config), "--role", self.role]
        if self.worker is not None:
            args += ["--worker", self.worker]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            wait_for(self.ready, timeout_s=60, what=f"secagg {self.name} to be ready")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"secagg {self.name} exited: {self.log.read_text()}"
        return "ready: broker connected" in self.log.read_text()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status (None: it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None
