"""More processes to answer HTTP (``secagg serve --http-workers N``).

One Python process answers its requests one at a time, whatever the cores: its threads share one
interpreter lock. ``--http-workers N`` starts N more processes beside the service that answer the
same port: the service binds the listening socket and each HTTP worker inherits it (as
gunicorn's and uvicorn's own workers do), so the kernel hands each new connection to whichever
process accepts first, which is one that is not busy. Everything they share is in the store:
tokens, users, sessions and their CSRF tokens, reviews, plots (SQLite in WAL mode: readers in
every process, the rare writes one at a time).

An HTTP worker serves the API and the pages and nothing else: no MQTT, no sweep, no OTA, no
notification sender. It is a child of the service, never a unit of its own:

- it reads the service's liveness (broker connection, store writer) from its stdin, a line of
  JSON each :data:`aggregator.service.TURN_S`, so that ``/api/health`` answers the same whichever
  process took the connection; the first line also carries the token of the service's own
  health probe;
- it stops when its stdin closes: when the service stops, and when the service dies however it
  died (SIGKILL too), so none outlives it;
- the service treats an HTTP worker that exits unasked like its store writer dying: it stops
  and exits non-zero, and systemd restarts the whole service.

Per process, not shared: the login throttle (``auth.login_max_failures`` counts the failures
that reached one process: with N workers an address may fail up to N + 1 times as often
before it waits), the plot rate (``api.plots_per_minute``), the one-at-a-time lock of
``POST /api/events/{id}/reproduce``, and ``/metrics``'s request histograms (the answer is the
process that took the scrape's connection; the ingest's counters are only the service's own).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import uvicorn

from aggregator.liveness import NO_INGEST, Liveness

log = logging.getLogger("aggregator.http_workers")  # also when run as __main__

WORKER_HEADER = "X-Secagg-Worker"
"""Which process answered (0: the service, 1..N its HTTP workers), sent only with
``--http-workers``: to follow a request through the logs, and for the tests."""

STOP_S = 10.0
"""How long a stopping service waits for its HTTP workers to finish their requests."""


class HttpWorkerError(RuntimeError):
    """An HTTP worker could not be started."""


@dataclasses.dataclass
class _Child:
    number: int
    process: subprocess.Popen[bytes]
    stdin: IO[bytes]


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The API's listening socket, bound as uvicorn binds it (``OSError`` when the port is
    taken), for the service and its HTTP workers to share. uvicorn makes it with protocol 0,
    and asyncio sets ``TCP_NODELAY`` only on connections accepted from a socket whose protocol
    says TCP: without it, an answer written in two parts (head, then body) waited for the
    client's delayed ACK, 40 ms. The same socket, told to find out what it is, says TCP."""
    bound = config.bind_socket()
    return socket.socket(fileno=bound.detach())


class HttpWorkers:
    """The service's side: start the workers on the listening socket ``sock``, feed them the
    liveness, notice one that died, stop them."""

    def __init__(
        self,
        *,
        count: int,
        config_path: Path,
        sock: socket.socket,
        log_level: str,
        log_format: str,
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.sock = sock
        self.log_level = log_level
        self.log_format = log_format
        self._children: list[_Child] = []
        self._stopping = False

    def start(self, service_token: str) -> None:
        fd = self.sock.fileno()
        for number in range(1, self.count + 1):
            command = [
                sys.executable,
                "-m",
                "aggregator.http_workers",
                "--config",
                str(self.config_path),
                "--fd",
                str(fd),
                "--number",
                str(number),
                "--log-level",
                self.log_level,
                "--log-format",
                self.log_format,
            ]
            try:
                process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(fd,))
            except OSError as exc:
                raise HttpWorkerError(f"HTTP worker {number} did not start: {exc}") from exc
            assert process.stdin is not None
            os.set_blocking(process.stdin.fileno(), False)  # a stuck worker never stops us
            child = _Child(number, process, process.stdin)
            self._children.append(child)
            self._send(child, {"service_token": service_token})
            log.info("HTTP worker %d started (pid %d)", number, process.pid)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def _send(self, child: _Child, message: dict[str, Any]) -> None:
        """One line, written whole or not at all (a pipe writes up to ``PIPE_BUF`` bytes at
        once): a worker that does not read (stopped, stuck) misses states, never gets half
        of one, and never blocks the service's main loop."""
        line = json.dumps(message).encode() + b"\n"
        if len(line) > select.PIPE_BUF:
            log.warning("not sent to HTTP worker %d: %d bytes", child.number, len(line))
            return
        with contextlib.suppress(OSError):  # full: the next turn sends a newer state; dead:
            os.write(child.stdin.fileno(), line)  # dead() says so

    def publish(self, liveness: Liveness) -> None:
        """Tell every worker the service's liveness (what its /api/health reports)."""
        fields = dataclasses.asdict(liveness)  # reasons cut short: a line fits a pipe write
        state = {"liveness": {k: v[:500] if isinstance(v, str) else v for k, v in fields.items()}}
        for child in self._children:
            self._send(child, state)

    def dead(self) -> str | None:
        """Why the service must stop: an HTTP worker that exited unasked (None: all run)."""
        if self._stopping:
            return None
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                return f"HTTP worker {child.number} (pid {child.process.pid}) exited with {code}"
        return None

    def stop(self) -> None:
        """Close their stdin (they finish their requests and exit), wait, then kill."""
        self._stopping = True
        for child in self._children:
            with contextlib.suppress(OSError):
                child.stdin.close()
        for child in self._children:
            try:
                child.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                log.warning("HTTP worker %d did not stop in %g s: killed", child.number, STOP_S)
                child.process.kill()
                child.process.wait()


class _LivenessFeed:
    """The worker's side: the service's liveness as last told on stdin."""

    def __init__(self) -> None:
        self.current: Liveness = NO_INGEST

    def __call__(self) -> Liveness:
        return self.current

    def update(self, message: dict[str, Any]) -> None:
        if "liveness" in message:
            self.current = Liveness(**message["liveness"])


def _read_stdin(feed: _LivenessFeed, server: uvicorn.Server) -> None:
    for line in sys.stdin.buffer:
        feed.update(json.loads(line))
    log.info("the service closed our stdin: stopping")
    server.should_exit = True


def main(argv: list[str] | None = None) -> None:
    """An HTTP worker (started by the service, never by hand): serve the app on the inherited
    listening socket until stdin closes."""
    from aggregator.api import create_app
    from aggregator.cli import freeze_startup_objects
    from aggregator.config import load_aggregator_config
    from aggregator.metrics import AggregatorMetrics
    from appcommon.cli import setup_logging

    parser = argparse.ArgumentParser(prog="python -m aggregator.http_workers")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    first = json.loads(sys.stdin.buffer.readline() or b"{}")
    if "service_token" not in first:  # the service is gone already
        raise SystemExit("HTTP worker: no word from the service on stdin")
    config, _ = load_aggregator_config(args.config)
    feed = _LivenessFeed()
    app = create_app(
        config,
        liveness=feed,
        service_token=first["service_token"],
        metrics_of=AggregatorMetrics(config),
        worker_number=args.number,
    )
    sock = socket.socket(fileno=args.fd)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            log_config=None if args.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        )
    )
    # Only the service stops it (by closing stdin): systemd's SIGTERM to the whole unit, or a
    # terminal's Ctrl-C to the process group, would otherwise stop it before the service, which
    # would then take it for a worker that died. uvicorn off the main thread leaves them alone.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serving = threading.Thread(target=server.run, args=([sock],), name="api")
    freeze_startup_objects()
    serving.start()
    log.info("HTTP worker %d (pid %d) serving", args.number, os.getpid())
    _read_stdin(feed, server)
    serving.join()
    for pool in app.state.read_pools.values():
        pool.close()


if __name__ == "__main__":
    main()


__all__ = ["WORKER_HEADER", "HttpWorkerError", "HttpWorkers", "listening_socket", "main"]
