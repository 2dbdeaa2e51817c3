"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Never relies on a broker already running: it writes its own config (persistence on, so a
restart on the same port keeps persistent sessions and queued messages) and waits until the port
accepts connections.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start."""


def find_mosquitto() -> str:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BrokerError("mosquitto not found: apt-get install mosquitto (make setup does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, *, timeout_s: float) -> None:
    """Return once ``host:port`` accepts TCP connections; BrokerError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s} s") from exc
            time.sleep(0.05)  # poll interval of a deadline wait


class Mosquitto:
    """``with Mosquitto(workdir) as broker: broker.port``; ``restart()`` keeps the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        config_file: Path | None = None,
        persistence: bool = True,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        self.persistence = persistence
        self.config_file = config_file  # a ready-made config (its listener must be self.port)

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"log_dest file {self.log_path}\n"
            # Started as root, Mosquitto drops to user 'mosquitto', which cannot write here.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_config
        )
        return conf

    def start(self, *, timeout_s: float = 10.0) -> Mosquitto:
        conf = self.config_file or self.write_config()
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s=timeout_s)
        except BrokerError as exc:
            self.stop()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise BrokerError(f"mosquitto did not start: {exc}\n{log[-2000:]}") from exc
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
